//! Times kernels on one thread with every buffer at the same offset from a 64-byte boundary
//! (0, 16, 32, 48 bytes), in one process, the offsets interleaved round by round: the SIMD
//! loops' sensitivity to where the caller's buffers start (docs/performance.md, "Alignment").
//!
//! `cargo run --release -p norm-kernels --example alignment [ROUNDS]`

use norm_kernels::*;
use std::time::Instant;

/// A buffer of `len` values starting `off` bytes past a 64-byte boundary.
struct At {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl At {
    fn new(len: usize, off: usize, seed: usize) -> At {
        let mut buf = vec![0f32; len + 32];
        let lead = (64 - buf.as_ptr() as usize % 64) % 64 / 4;
        for (i, v) in buf.iter_mut().enumerate() {
            *v = ((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0 - 2.0;
        }
        At {
            buf,
            start: lead + off / 4,
            len,
        }
    }
    fn get(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
    fn get_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// One case's buffers at one offset.
struct Bufs {
    x: At,
    dy: At,
    y: At,
    dx: At,
    stats: (Vec<f32>, Vec<f32>),
    affine: (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
}

#[derive(Clone, Copy)]
enum Kernel {
    GroupForward,
    GroupBackward,
    BatchForward,
}

fn run(k: Kernel, shape: Nchw, b: &mut Bufs) {
    let (gamma, beta, dg, db) = &mut b.affine;
    let (mean, rstd) = &mut b.stats;
    let affine = Some(Affine { gamma, beta });
    let p = Parallelism::None;
    let r = match k {
        Kernel::GroupForward => {
            let out = Output {
                y: b.y.get_mut(),
                stats: StatsMut { mean, rstd },
            };
            group_norm_forward(&GroupNorm::new(32), shape, b.x.get(), affine, out, p)
        }
        Kernel::GroupBackward => {
            let saved = Saved {
                x: b.x.get(),
                stats: Stats { mean, rstd },
            };
            let grads = Grads {
                dx: b.dx.get_mut(),
                affine: Some(AffineGrads {
                    dgamma: dg,
                    dbeta: db,
                }),
            };
            group_norm_backward(
                &GroupNorm::new(32),
                shape,
                saved,
                b.dy.get(),
                Some(gamma),
                grads,
                p,
            )
        }
        Kernel::BatchForward => {
            let out = Output {
                y: b.y.get_mut(),
                stats: StatsMut { mean, rstd },
            };
            let bn = BatchNorm {
                track_running_stats: false,
                ..BatchNorm::default()
            };
            batch_norm_forward_train(&bn, shape, b.x.get(), affine, None, out, p)
        }
    };
    r.expect("valid case");
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |s| s.parse().expect("ROUNDS"));
    let cases = [
        (
            "GroupNorm forward",
            Kernel::GroupForward,
            Nchw::new(2, 64, 32, 32),
        ),
        (
            "GroupNorm backward",
            Kernel::GroupBackward,
            Nchw::new(2, 64, 32, 32),
        ),
        (
            "GroupNorm forward",
            Kernel::GroupForward,
            Nchw::new(32, 64, 8, 8),
        ),
        (
            "BatchNorm forward",
            Kernel::BatchForward,
            Nchw::new(2, 64, 32, 32),
        ),
    ];
    let offsets = [0usize, 16, 32, 48];
    for (name, k, shape) in cases {
        let n = shape.len();
        let groups = match k {
            Kernel::BatchForward => shape.c,
            _ => shape.n * 32,
        };
        let mut bufs: Vec<Bufs> = offsets
            .iter()
            .map(|&o| Bufs {
                x: At::new(n, o, 1),
                dy: At::new(n, o, 2),
                y: At::new(n, o, 3),
                dx: At::new(n, o, 4),
                stats: (vec![0.0; groups], vec![0.0; groups]),
                affine: (
                    vec![1.1; shape.c],
                    vec![0.1; shape.c],
                    vec![0.0; shape.c],
                    vec![0.0; shape.c],
                ),
            })
            .collect();
        // The backward consumes the statistics of a forward on the same x.
        if let Kernel::GroupBackward = k {
            for b in &mut bufs {
                run(Kernel::GroupForward, shape, b);
            }
        }
        let mut per: Vec<Vec<f64>> = vec![vec![]; offsets.len()];
        for _ in 0..rounds {
            for (i, b) in bufs.iter_mut().enumerate() {
                let mut t = Vec::with_capacity(400);
                for _ in 0..400 {
                    let s = Instant::now();
                    run(k, shape, b);
                    t.push(s.elapsed().as_secs_f64() * 1e6);
                }
                t.sort_by(f64::total_cmp);
                per[i].push(t[200]);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = med(&mut per[0].clone());
        let cells: Vec<String> = per
            .iter_mut()
            .zip(offsets)
            .map(|(v, o)| {
                let m = med(v);
                format!("{o} B: {m:.2} µs ({:.3})", m / base)
            })
            .collect();
        println!("{name} {shape}: {}", cells.join(", "));
    }
}
