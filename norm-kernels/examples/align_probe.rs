// scratch: GroupNorm forward 2x64x32x32 on one thread, x and y at chosen offsets mod 64 bytes
use norm_kernels::*;
use std::time::Instant;
fn main() {
    let shape = Nchw::new(2, 64, 32, 32);
    let n = shape.len();
    let g = GroupNorm {
        groups: 32,
        eps: 1e-5,
        affine: true,
    };
    let gamma = vec![1.1f32; 64];
    let beta = vec![0.1f32; 64];
    let mut mean = vec![0f32; 64];
    let mut rstd = vec![0f32; 64];
    let mut bx = vec![0f32; n + 64];
    let mut by = vec![0f32; n + 64];
    for (i, v) in bx.iter_mut().enumerate() {
        *v = ((i * 7919) % 1000) as f32 / 250.0 - 2.0;
    }
    let ax = (64 - bx.as_ptr() as usize % 64) % 64 / 4;
    let ay = (64 - by.as_ptr() as usize % 64) % 64 / 4;
    for pass in 0..3 {
        for (ox, oy) in [
            (0usize, 0usize),
            (4, 4),
            (8, 8),
            (12, 12),
            (0, 4),
            (4, 0),
            (0, 8),
            (8, 0),
        ] {
            let x = &bx[ax + ox..ax + ox + n];
            let y = &mut by[ay + oy..ay + oy + n];
            let mut times = vec![];
            for _ in 0..3000 {
                let t = Instant::now();
                group_norm_forward(
                    &g,
                    shape,
                    x,
                    Some(Affine {
                        gamma: &gamma,
                        beta: &beta,
                    }),
                    Output {
                        y,
                        stats: StatsMut {
                            mean: &mut mean,
                            rstd: &mut rstd,
                        },
                    },
                    Parallelism::None,
                )
                .unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            if pass > 0 {
                println!(
                    "x at {:2} B, y at {:2} B mod 64: median {:.2} µs p10 {:.2}",
                    ox * 4,
                    oy * 4,
                    times[1500],
                    times[300]
                );
            }
        }
    }
}
