//! Each custom tape op against an independent computation: the convolution against direct f64
//! loops, pooling and every norm against the same computation composed from dfdx's own ops
//! (`normalize`, `max`, `broadcast_like`, ...), forward values and the gradients dfdx's tape
//! delivers for every input.

use crate::{
    NormChoice, NormKind, model_norm,
    ops::{
        BufferPool, conv,
        norm::{self, NormLayer, Post, Running},
        pool,
    },
};
use dfdx::prelude::*;
use norm_kernels::Mode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type S4 = (usize, usize, usize, usize);

fn random(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1.0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// `y[n, co, oy, ox] = b[co] + Σ w[co, ci, ky, kx] · x[n, ci, oy+ky-1, ox+kx-1]` in f64, plus the
/// adjoints for a given `dy`.
#[allow(clippy::type_complexity)]
fn conv_direct(
    (n, ci, co, h, w): (usize, usize, usize, usize, usize),
    x: &[f32],
    wt: &[f32],
    b: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; n * co * h * w];
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; co]);
    for i in 0..n {
        for o in 0..co {
            for oy in 0..h {
                for ox in 0..w {
                    let yi = ((i * co + o) * h + oy) * w + ox;
                    let mut acc = b[o] as f64;
                    db[o] += dy[yi] as f64;
                    for c in 0..ci {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) =
                                    (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((i * ci + c) * h + iy as usize) * w + ix as usize;
                                let wi = ((o * ci + c) * 3 + ky) * 3 + kx;
                                acc += wt[wi] as f64 * x[xi] as f64;
                                dx[xi] += wt[wi] as f64 * dy[yi] as f64;
                                dw[wi] += x[xi] as f64 * dy[yi] as f64;
                            }
                        }
                    }
                    y[yi] = acc;
                }
            }
        }
    }
    (y, dx, dw, db)
}

#[test]
fn conv3x3_matches_direct_loops() {
    let dev = Cpu::default();
    let pool = BufferPool::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // Odd and tiny shapes, including 1×1 and 1×N images and a batch not a multiple of the chunk.
    for &(n, ci, co, h, w) in &[
        (2, 3, 5, 5, 7),
        (1, 1, 1, 1, 1),
        (11, 2, 3, 1, 4),
        (3, 4, 2, 6, 2),
        (9, 3, 16, 8, 8),
    ] {
        let x = random(&mut rng, n * ci * h * w, -1.0, 1.0);
        let wt = random(&mut rng, co * ci * 9, -1.0, 1.0);
        let b = random(&mut rng, co, -1.0, 1.0);
        let r = random(&mut rng, n * co * h * w, -1.0, 1.0);
        let (y_ref, dx_ref, dw_ref, db_ref) = conv_direct((n, ci, co, h, w), &x, &wt, &b, &r);

        let xt = dev.tensor_from_vec(x.clone(), (n, ci, h, w));
        let wt_t = dev.tensor_from_vec(wt.clone(), (wt.len(),));
        let bt = dev.tensor_from_vec(b.clone(), (co,));
        let rt = dev.tensor_from_vec(r.clone(), (n, co, h, w));
        let y = conv::conv3x3(
            xt.leaky_trace(),
            wt_t.leaky_trace(),
            bt.leaky_trace(),
            &pool,
        )
        .unwrap();
        assert_close("conv y", &y.as_vec(), &y_ref, 1e-5);
        let loss = (y * rt).sum::<Rank0, _>();
        let g = loss.backward();
        let tag = format!("{n}x{ci}->{co} {h}x{w}");
        assert_close(&format!("{tag} dx"), &g.get(&xt).as_vec(), &dx_ref, 1e-5);
        assert_close(&format!("{tag} dw"), &g.get(&wt_t).as_vec(), &dw_ref, 1e-5);
        assert_close(&format!("{tag} db"), &g.get(&bt).as_vec(), &db_ref, 1e-5);

        // Without a tape on x (the model's first layer) the parameter gradients are the same.
        let y = conv::conv3x3(xt.clone(), wt_t.leaky_trace(), bt.leaky_trace(), &pool).unwrap();
        let g = (y * dev.tensor_from_vec(r.clone(), (n, co, h, w)))
            .sum::<Rank0, _>()
            .backward();
        assert_close(
            &format!("{tag} dw (no dx)"),
            &g.get(&wt_t).as_vec(),
            &dw_ref,
            1e-5,
        );
    }
}

/// The direct kernels (what the model runs) against their im2col + GEMM twins, on widths that
/// are not a multiple of the 8-pixel vectors, channel counts that are not a multiple of the
/// register blocks, and gradients accumulated onto non-zero buffers.
#[test]
fn conv3x3_direct_matches_gemm_twin() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(n, c_in, c_out, h, w) in &[
        (1, 1, 1, 1, 1),
        (3, 3, 5, 3, 9),
        (2, 7, 13, 5, 17),
        (9, 16, 32, 16, 16),
        (5, 32, 64, 8, 8),
        (4, 2, 9, 11, 1),
        (2, 5, 3, 2, 24),
        (3, 6, 9, 6, 4),
        (2, 4, 8, 8, 16),
    ] {
        let s = conv::ConvShape {
            n,
            c_in,
            c_out,
            h,
            w,
        };
        let x = random(&mut rng, s.x_len(), -1.0, 1.0);
        let wt = random(&mut rng, s.weight_len(), -1.0, 1.0);
        let b = random(&mut rng, c_out, -1.0, 1.0);
        let dy = random(&mut rng, s.y_len(), -1.0, 1.0);
        let tag = format!("{n}x{c_in}->{c_out} {h}x{w}");
        let (mut y, mut y_ref) = (vec![0.0; s.y_len()], vec![0.0; s.y_len()]);
        conv::conv3x3_forward(s, &x, &wt, &b, &mut y);
        conv::conv3x3_forward_gemm(s, &x, &wt, &b, &mut y_ref);
        assert_close(&format!("{tag} y"), &y, &to64(&y_ref), 1e-5);
        let start = (
            random(&mut rng, s.x_len(), -1.0, 1.0),
            random(&mut rng, s.weight_len(), -1.0, 1.0),
            random(&mut rng, c_out, -1.0, 1.0),
        );
        let (mut dx, mut dw, mut db) = start.clone();
        let (mut dx_ref, mut dw_ref, mut db_ref) = start;
        conv::conv3x3_backward(s, &x, &wt, &dy, Some(&mut dx), &mut dw, &mut db);
        conv::conv3x3_backward_gemm(s, &x, &wt, &dy, Some(&mut dx_ref), &mut dw_ref, &mut db_ref);
        assert_close(&format!("{tag} dx"), &dx, &to64(&dx_ref), 1e-5);
        assert_close(&format!("{tag} dw"), &dw, &to64(&dw_ref), 1e-5);
        assert_close(&format!("{tag} db"), &db, &to64(&db_ref), 1e-5);
    }
}

#[test]
fn im2col_and_col2im_are_adjoint() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (c, h, w) = (3, 5, 4);
    let x = random(&mut rng, c * h * w, -1.0, 1.0);
    let r = random(&mut rng, c * 9 * h * w, -1.0, 1.0);
    let mut col = vec![0.0; c * 9 * h * w];
    conv::im2col(c, h, w, &x, &mut col);
    let mut back = vec![0.0; c * h * w];
    conv::col2im_add(c, h, w, &r, &mut back);
    // <im2col(x), r> == <x, col2im(r)>
    let lhs: f64 = col.iter().zip(&r).map(|(a, b)| (a * b) as f64).sum();
    let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
    assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
}

#[test]
fn max_pool_matches_dfdx_max_over_a_reshaped_view() {
    let dev = Cpu::default();
    let (pool_f, pool_u) = (BufferPool::default(), BufferPool::default());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(n, c, h, w) in &[(2, 3, 4, 6), (1, 1, 2, 2), (3, 2, 8, 8)] {
        let x = random(&mut rng, n * c * h * w, -3.0, 3.0);
        let r = random(&mut rng, n * c * h * w / 4, -1.0, 1.0);
        let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
        let rt = dev.tensor_from_vec(r.clone(), (n, c, h / 2, w / 2));

        let y = pool::max_pool2(xt.leaky_trace(), &pool_f, &pool_u).unwrap();
        let y_v = y.as_vec();
        let g = (y * rt.clone()).sum::<Rank0, _>().backward();
        let dx = g.get(&xt).as_vec();

        let view = xt
            .leaky_trace()
            .reshape_like(&(n, c, h / 2, 2usize, w / 2, 2usize));
        let y2: Tensor<S4, f32, Cpu, _> = view.max::<S4, Axes2<3, 5>>();
        let y2_v = y2.as_vec();
        let g2 = (y2 * rt).sum::<Rank0, _>().backward();
        assert_close("pool y", &y_v, &to64(&y2_v), 0.0);
        assert_close("pool dx", &dx, &to64(&g2.get(&xt).as_vec()), 0.0);
    }
}

/// The norm composed from dfdx's ops: `normalize` over the kind's axes, then the affine.
fn composed(
    kind: NormChoice,
    groups: usize,
    eps: f32,
    x: Tensor<S4, f32, Cpu, OwnedTape<f32, Cpu>>,
    gamma: Tensor<(usize,), f32, Cpu, OwnedTape<f32, Cpu>>,
    beta: Tensor<(usize,), f32, Cpu, OwnedTape<f32, Cpu>>,
) -> Tensor<S4, f32, Cpu, OwnedTape<f32, Cpu>> {
    let s = *x.shape();
    let (n, c, h, w) = s;
    match kind {
        // BatchRenorm at the start of its warm-up (r_max 1, d_max 0) is BatchNorm.
        NormChoice::Norm(NormKind::Batch | NormKind::BatchRenorm) => {
            let y = x.normalize::<Axes3<0, 2, 3>>(eps);
            y * gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s)
                + beta.broadcast_like::<_, Axes3<0, 2, 3>>(&s)
        }
        NormChoice::Norm(NormKind::Instance) => {
            let y = x.normalize::<Axes2<2, 3>>(eps);
            y * gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s)
                + beta.broadcast_like::<_, Axes3<0, 2, 3>>(&s)
        }
        NormChoice::Norm(NormKind::Group) => {
            let y = x
                .reshape_like(&(n, groups, c / groups * h * w))
                .normalize::<Axis<2>>(eps)
                .reshape_like(&s);
            y * gamma.broadcast_like::<_, Axes3<0, 2, 3>>(&s)
                + beta.broadcast_like::<_, Axes3<0, 2, 3>>(&s)
        }
        NormChoice::Norm(NormKind::Layer) => {
            let y = x.normalize::<Axes3<1, 2, 3>>(eps);
            let chw = (c, h, w);
            y * gamma.reshape_like(&chw).broadcast_like::<_, Axis<0>>(&s)
                + beta.reshape_like(&chw).broadcast_like::<_, Axis<0>>(&s)
        }
        NormChoice::None => x,
    }
}

#[test]
fn every_norm_with_relu_and_pool_matches_its_dfdx_composition() {
    let dev = Cpu::default();
    let (pool, pool_u) = (BufferPool::default(), BufferPool::default());
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let eps = 1e-5;
    for kind in NormChoice::all() {
        let shapes = [
            (3, 4, 5, 3, 2, Post::Identity),
            (2, 6, 4, 4, 3, Post::Relu),
            (4, 8, 2, 2, 8, Post::Identity),
            (3, 4, 5, 3, 4, Post::Relu),
            (2, 4, 6, 4, 2, Post::ReluMaxPool2),
            (3, 2, 5, 7, 1, Post::ReluMaxPool2),
        ];
        for &(n, c, h, w, groups, post) in &shapes {
            let spec = kind.kind().map(|k| model_norm(k, groups, eps).ramped(0.0));
            let shape = norm_kernels::Nchw::new(n, c, h, w);
            let al = spec.map_or(0, |s| s.affine_len(shape)).max(1);
            // A large offset checks the statistics are computed stably.
            let x = random(&mut rng, n * c * h * w, 9.0, 13.0);
            let gamma = random(&mut rng, al, 0.5, 1.5);
            let beta = random(&mut rng, al, -0.5, 0.5);
            let r = random(&mut rng, n * c * h * w, -1.0, 1.0);
            let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
            let gt = dev.tensor_from_vec(gamma.clone(), (al,));
            let bt = dev.tensor_from_vec(beta.clone(), (al,));
            let r_shape = if post == Post::ReluMaxPool2 {
                (n, c, h / 2, w / 2)
            } else {
                (n, c, h, w)
            };
            let r = r[..r_shape.0 * r_shape.1 * r_shape.2 * r_shape.3].to_vec();
            let rt = dev.tensor_from_vec(r.clone(), r_shape);
            let mut layer = spec.map(|s| NormLayer::new(s, c));
            let affine = (kind != NormChoice::None).then(|| (gt.leaky_trace(), bt.leaky_trace()));
            let y = norm::norm(
                xt.leaky_trace(),
                affine,
                layer.as_mut(),
                Mode::Train,
                post,
                (&pool, &pool_u),
            )
            .unwrap();
            let y_v = y.as_vec();
            let g = (y * rt.clone()).sum::<Rank0, _>().backward();

            let y2 = composed(
                kind,
                groups,
                eps,
                xt.leaky_trace(),
                gt.leaky_trace(),
                bt.leaky_trace(),
            );
            let y2 = match post {
                Post::Identity => y2,
                Post::Relu => y2.relu(),
                // Floor mode: crop to even sizes, then max over 2×2 windows of a 6-d view.
                Post::ReluMaxPool2 => {
                    let (h2, w2) = (h / 2, w / 2);
                    let y2 = y2.relu();
                    let y2 = if (h % 2, w % 2) == (0, 0) {
                        y2
                    } else {
                        y2.slice((.., .., ..2 * h2, ..2 * w2)).realize::<S4>()
                    };
                    y2.reshape_like(&(n, c, h2, 2usize, w2, 2usize))
                        .max::<S4, Axes2<3, 5>>()
                }
            };
            let y2_v = y2.as_vec();
            let g2 = (y2 * rt).sum::<Rank0, _>().backward();
            let tag = format!("{kind} {n}x{c}x{h}x{w} {post:?}");
            assert_close(&format!("{tag} y"), &y_v, &to64(&y2_v), 2e-4);
            assert_close(
                &format!("{tag} dx"),
                &g.get(&xt).as_vec(),
                &to64(&g2.get(&xt).as_vec()),
                2e-3,
            );
            if kind != NormChoice::None {
                assert_close(
                    &format!("{tag} dgamma"),
                    &g.get(&gt).as_vec(),
                    &to64(&g2.get(&gt).as_vec()),
                    2e-4,
                );
                assert_close(
                    &format!("{tag} dbeta"),
                    &g.get(&bt).as_vec(),
                    &to64(&g2.get(&bt).as_vec()),
                    2e-4,
                );
            }
            if let Some(running) = layer.as_ref().and_then(NormLayer::running) {
                // PyTorch's update: running = 0.9·running + 0.1·batch, unbiased variance.
                let m = (n * h * w) as f64;
                for ch in 0..c {
                    let vals: Vec<f64> = (0..n)
                        .flat_map(|i| x[(i * c + ch) * h * w..][..h * w].iter().map(|&v| v as f64))
                        .collect();
                    let mean = vals.iter().sum::<f64>() / m;
                    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (m - 1.0);
                    assert!(
                        (running.mean[ch] as f64 - 0.1 * mean).abs() < 1e-4,
                        "running mean"
                    );
                    assert!(
                        (running.var[ch] as f64 - (0.9 + 0.1 * var)).abs() < 1e-4,
                        "running var"
                    );
                }
                assert_eq!(running.num_batches_tracked, 1);
            }
        }
    }
}

#[test]
fn batch_norm_eval_mode_uses_running_statistics() {
    let dev = Cpu::default();
    let pool = BufferPool::default();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (n, c, h, w) = (2, 3, 4, 4);
    let spec = model_norm(NormKind::Batch, 1, 1e-5);
    let x = random(&mut rng, n * c * h * w, -2.0, 2.0);
    let gamma = random(&mut rng, c, 0.5, 1.5);
    let beta = random(&mut rng, c, -0.5, 0.5);
    let mut layer = NormLayer::new(spec, c);
    let running = layer.running_mut().unwrap();
    *running = Running {
        mean: random(&mut rng, c, -1.0, 1.0),
        var: random(&mut rng, c, 0.5, 2.0),
        num_batches_tracked: 3,
    };
    let before = running.clone();
    let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
    let gt = dev.tensor_from_vec(gamma.clone(), (c,));
    let bt = dev.tensor_from_vec(beta.clone(), (c,));
    let y = norm::norm(
        xt.leaky_trace(),
        Some((gt.leaky_trace(), bt.leaky_trace())),
        Some(&mut layer),
        Mode::Eval,
        Post::Identity,
        (&pool, &BufferPool::default()),
    )
    .unwrap();
    assert_eq!(
        layer.running(),
        Some(&before),
        "eval mode must not touch the running statistics"
    );
    let y_v = y.as_vec();
    let g = y.sum::<Rank0, _>().backward();
    let mut want_y = vec![0.0; x.len()];
    let mut want_dx = vec![0.0; x.len()];
    for (i, (wy, wdx)) in want_y.iter_mut().zip(&mut want_dx).enumerate() {
        let ch = (i / (h * w)) % c;
        let rstd = 1.0 / (before.var[ch] as f64 + 1e-5).sqrt();
        *wy = (x[i] as f64 - before.mean[ch] as f64) * rstd * gamma[ch] as f64 + beta[ch] as f64;
        *wdx = gamma[ch] as f64 * rstd;
    }
    assert_close("bn eval y", &y_v, &want_y, 1e-5);
    assert_close("bn eval dx", &g.get(&xt).as_vec(), &want_dx, 1e-5);
}

/// Set in the child run of [`conv_vector_widths_write_the_same_bits`].
const LANES_CHILD: &str = "NORMLAB_CONV_LANES_TEST_CHILD";

/// Bits of every output of the stride-1 and stride-2 direct convolutions, forward and backward,
/// on rows and channel counts that are and are not multiples of 16.
fn conv_digests() -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut out = Vec::new();
    for &(n, c_in, c_out, h, w) in &[
        (3, 5, 16, 7, 16),
        (2, 3, 48, 5, 32),
        (2, 16, 32, 16, 48),
        (3, 7, 24, 6, 16),
        (2, 4, 16, 9, 20),
        (2, 8, 32, 8, 8),
        (3, 64, 64, 8, 8),
        (2, 5, 16, 7, 8),
        (2, 8, 32, 16, 16),
        (2, 6, 16, 8, 4),
    ] {
        let s = conv::ConvShape {
            n,
            c_in,
            c_out,
            h,
            w,
        };
        let x = random(&mut rng, s.x_len(), -1.0, 1.0);
        let wt = random(&mut rng, s.weight_len(), -1.0, 1.0);
        let b = random(&mut rng, c_out, -1.0, 1.0);
        let dy = random(&mut rng, s.y_len(), -1.0, 1.0);
        let mut y = vec![0.0; s.y_len()];
        conv::conv3x3_forward(s, &x, &wt, &b, &mut y);
        let (mut dx, mut dw, mut db) =
            (vec![0.5; s.x_len()], vec![0.25; wt.len()], vec![0.0; c_out]);
        conv::conv3x3_backward(s, &x, &wt, &dy, Some(&mut dx), &mut dw, &mut db);
        let (oh, ow) = crate::ops::conv3x3_s2::out_dims(h, w);
        let dy2 = random(&mut rng, n * c_out * oh * ow, -1.0, 1.0);
        let mut y2 = vec![0.0; dy2.len()];
        crate::ops::conv3x3_s2::forward(s, &x, &wt, &mut y2);
        let (mut dx2, mut dw2) = (vec![0.0; s.x_len()], vec![0.0; wt.len()]);
        crate::ops::conv3x3_s2::backward(s, &x, &wt, &dy2, Some(&mut dx2), &mut dw2);
        for (name, v) in [("y", &y), ("dx", &dx), ("dw", &dw), ("db", &db)]
            .into_iter()
            .chain([("y2", &y2), ("dx2", &dx2), ("dw2", &dw2)])
        {
            let fnv = v.iter().fold(0xcbf2_9ce4_8422_2325u64, |a, f| {
                (a ^ u64::from(f.to_bits())).wrapping_mul(0x0100_0000_01b3)
            });
            out.push(format!("{n}x{c_in}->{c_out} {h}x{w} {name} {fnv:016x}"));
        }
    }
    out
}

/// The 16-lane (AVX-512F) kernels write the bits of the 8-lane ones: this run (16 lanes where the
/// CPU has them) against a child run with `NORMLAB_CONV_LANES=8`. On a CPU without AVX-512 both
/// runs take 8 lanes and the test only checks that the child runs.
#[test]
fn conv_vector_widths_write_the_same_bits() {
    if std::env::var_os(LANES_CHILD).is_some() {
        for line in conv_digests() {
            println!("digest {line}");
        }
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "tests::ops::conv_vector_widths_write_the_same_bits",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LANES_CHILD, "1")
        .env("NORMLAB_CONV_LANES", "8")
        .output()
        .unwrap();
    assert!(child.status.success(), "the 8-lane child run failed");
    let narrow: Vec<String> = String::from_utf8_lossy(&child.stdout)
        .lines()
        // (The harness's "test … " may start the first line.)
        .filter_map(|l| l.split_once("digest ").map(|(_, d)| d.to_owned()))
        .collect();
    let wide = conv_digests();
    assert_eq!(narrow.len(), wide.len(), "the child printed every digest");
    for (a, b) in wide.iter().zip(&narrow) {
        assert_eq!(a, b, "16 lanes against 8");
    }
}
