//! Timing: the 3×3 convolutions of the default CNN (widths 16/32/64) at batch 2 and 32: the direct
//! kernels (`conv3x3_forward` / `conv3x3_backward`, what the model runs) against their
//! im2col + GEMM twins, interleaved, with GFLOP/s (2 flops per multiply-add; the backward
//! counts `dW` and `dx`; `dW ms` is the direct backward without `dx`). Each figure is the fastest
//! of 31 calls.
//!
//! `NORMLAB_CONV_BATCHES="2 32" cargo test --release -p norm-train --lib conv3x3_timing --
//! --ignored --nocapture` (a timing, not a test: ignored in CI). Threads: `RAYON_NUM_THREADS`.

use std::hint::black_box;
use std::time::Instant;

use crate::ops::conv::{self, ConvShape};

#[test]
#[ignore = "a timing; run by hand"]
fn conv3x3_timing() {
    rayon::scope(|_| run());
}

fn fastest_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut v: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    // The fastest call: on a machine shared with other work, the least disturbed one.
    v.sort_by(f64::total_cmp);
    v[0]
}

fn run() {
    let batches: Vec<usize> = std::env::var("NORMLAB_CONV_BATCHES")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|a| a.parse().ok())
        .collect();
    let batches = if batches.is_empty() {
        vec![2, 32]
    } else {
        batches
    };
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "{:<22} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9}",
        "layer", "fwd ms", "gemm ms", "GF/s", "bwd ms", "gemm ms", "GF/s", "dW ms"
    );
    for &n in &batches {
        // The plain CNN's layers, then the ResNets' 3×3 layers inside a stage.
        for (c_in, c_out, hw) in [
            (3, 16, 32),
            (16, 32, 16),
            (32, 64, 8),
            (16, 16, 32),
            (32, 32, 16),
            (64, 64, 8),
        ] {
            let s = ConvShape {
                n,
                c_in,
                c_out,
                h: hw,
                w: hw,
            };
            let data = |len: usize, seed: u32| -> Vec<f32> {
                (0..len)
                    .map(|i| {
                        ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32
                            - 0.5
                    })
                    .collect()
            };
            let (x, w, b, dy) = (
                data(s.x_len(), 1),
                data(s.weight_len(), 2),
                data(c_out, 3),
                data(s.y_len(), 4),
            );
            let mut y = vec![0.0; s.y_len()];
            let (mut dx, mut dw, mut db) = (
                vec![0.0; s.x_len()],
                vec![0.0; s.weight_len()],
                vec![0.0; c_out],
            );
            let first = c_in == 3; // the model's first layer computes no dx
            let mut bwd = |gemm: bool| {
                let dx = (!first).then_some(&mut dx[..]);
                if gemm {
                    conv::conv3x3_backward_gemm(s, &x, &w, &dy, dx, &mut dw, &mut db);
                } else {
                    conv::conv3x3_backward(s, &x, &w, &dy, dx, &mut dw, &mut db);
                }
            };
            let fwd_d = fastest_ms(|| conv::conv3x3_forward(s, &x, &w, &b, black_box(&mut y)));
            let fwd_g = fastest_ms(|| conv::conv3x3_forward_gemm(s, &x, &w, &b, black_box(&mut y)));
            let bwd_d = fastest_ms(|| bwd(false));
            let bwd_g = fastest_ms(|| bwd(true));
            let dw_only =
                fastest_ms(|| conv::conv3x3_backward(s, &x, &w, &dy, None, &mut dw, &mut db));
            let flops = 2.0 * (n * c_out * c_in * 9 * hw * hw) as f64;
            let bwd_flops = if first { flops } else { 2.0 * flops };
            println!(
                "{:<22} {:>9.3} {:>9.3} {:>7.1} {:>9.3} {:>9.3} {:>7.1} {:>9.3}",
                format!("{n}x{c_in}->{c_out} {hw}x{hw}"),
                fwd_d,
                fwd_g,
                flops / fwd_d / 1e6,
                bwd_d,
                bwd_g,
                bwd_flops / bwd_d / 1e6,
                dw_only
            );
        }
    }
}
