//! The ResNets' tape ops against the same computation composed from dfdx's ops (and direct f64
//! loops), the whole ResNet against finite differences, checkpoints of a ResNet, and short
//! runs of every model learning above chance.

use crate::{
    Arch, Model, ModelConfig, NormChoice, NormKind, TrainConfig, data,
    ops::{
        BufferPool, conv,
        conv_strided::{self, StridedShape},
        residual, shares,
    },
    train,
};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type S4 = (usize, usize, usize, usize);
type S6 = (usize, usize, usize, usize, usize, usize);

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

/// Direct f64 loops: `y[n, co, oy, ox] = Σ w[co, ci, ky, kx] · x[n, ci, oy·s + ky − p, ox·s + kx − p]`
/// and the adjoints for `dy`.
fn conv_direct(s: StridedShape, x: &[f32], wt: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let (oh, ow, k, p) = (s.oh(), s.ow(), s.k, s.k / 2);
    let mut y = vec![0.0f64; s.y_len()];
    let (mut dx, mut dw) = (vec![0.0f64; x.len()], vec![0.0f64; wt.len()]);
    for i in 0..s.n {
        for o in 0..s.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((i * s.c_out + o) * oh + oy) * ow + ox;
                    for c in 0..s.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s.stride + ky) as isize - p as isize;
                                let ix = (ox * s.stride + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xi = ((i * s.c_in + c) * s.h + iy as usize) * s.w + ix as usize;
                                let wi = ((o * s.c_in + c) * k + ky) * k + kx;
                                y[yi] += wt[wi] as f64 * x[xi] as f64;
                                dx[xi] += wt[wi] as f64 * dy[yi] as f64;
                                dw[wi] += x[xi] as f64 * dy[yi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    [y, dx, dw].map(|v| v.into_iter().map(|a| a as f32).collect())
}

#[test]
fn strided_convs_match_direct_loops() {
    let dev = Cpu::default();
    let pool = BufferPool::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(n, c_in, c_out, h, w) in &[
        (2, 3, 5, 5, 7),
        (1, 1, 1, 1, 1),
        (11, 2, 3, 4, 1),
        (3, 4, 6, 8, 8),
        // Several vectors per output row, odd sizes, channel blocks with a remainder: the
        // direct stride-2 kernels' edges.
        (2, 5, 9, 17, 33),
        (1, 3, 7, 32, 32),
        (9, 6, 5, 16, 2),
        (2, 2, 4, 3, 18),
    ] {
        for (k, stride) in [(3, 1), (3, 2), (1, 1), (1, 2)] {
            let s = StridedShape {
                n,
                c_in,
                c_out,
                h,
                w,
                k,
                stride,
            };
            let x = random(&mut rng, s.x_len());
            let wt = random(&mut rng, s.weight_len());
            let r = random(&mut rng, s.y_len());
            let [y_ref, dx_ref, dw_ref] = conv_direct(s, &x, &wt, &r);
            let xt = dev.tensor_from_vec(x.clone(), (n, c_in, h, w));
            let wt_t = dev.tensor_from_vec(wt.clone(), (wt.len(),));
            let y = conv_strided::conv_strided(
                xt.leaky_trace(),
                wt_t.leaky_trace(),
                (c_out, k, stride),
                &pool,
            )
            .unwrap();
            let tag = format!("{n}x{c_in}->{c_out} {h}x{w} k{k} s{stride}");
            assert_eq!(*y.shape(), (n, c_out, s.oh(), s.ow()), "{tag}");
            assert_close(&format!("{tag} y"), &y.as_vec(), &y_ref, 1e-5);
            let g = (y * dev.tensor_from_vec(r.clone(), (n, c_out, s.oh(), s.ow())))
                .sum::<Rank0, _>()
                .backward();
            assert_close(&format!("{tag} dx"), &g.get(&xt).as_vec(), &dx_ref, 1e-5);
            assert_close(&format!("{tag} dw"), &g.get(&wt_t).as_vec(), &dw_ref, 1e-5);
        }
    }
}

/// `[N, C, H, W] → [N, C, H/2, W/2]` keeping the even rows and columns, from dfdx ops: a
/// reshape to `[N, C, H/2, 2, W/2, 2]`, a 0/1 mask and a sum over the two size-2 axes.
fn subsample2<T: Tape<f32, Cpu> + Merge<NoneTape>>(
    dev: &Cpu,
    x: Tensor<S4, f32, Cpu, T>,
) -> Tensor<S4, f32, Cpu, T> {
    let (n, c, h, w) = *x.shape();
    let s6: S6 = (n, c, h / 2, 2, w / 2, 2);
    let mask: Vec<f32> = (0..n * c * h * w)
        .map(|i| {
            let (xx, yy) = (i % w, (i / w) % h);
            if xx % 2 == 0 && yy % 2 == 0 { 1.0 } else { 0.0 }
        })
        .collect();
    let x6 = x.reshape_like(&s6);
    let m6 = dev.tensor_from_vec(mask, s6);
    (x6 * m6).sum::<S4, Axes2<3, 5>>()
}

#[test]
fn strided_convs_match_dfdx_compositions() {
    let dev = Cpu::default();
    let pool = BufferPool::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, c_in, c_out, h, w) = (3, 4, 5, 6, 8);
    let x = random(&mut rng, n * c_in * h * w);
    let r = random(&mut rng, n * c_out * (h / 2) * (w / 2));
    let r1 = random(&mut rng, n * c_out * h * w);
    // 3×3 stride 2 = the stride-1 conv (conv3x3, zero bias) at even positions.
    let wt = random(&mut rng, c_out * c_in * 9);
    let run = |composed: bool| {
        let xt = dev.tensor_from_vec(x.clone(), (n, c_in, h, w));
        let wt_t = dev.tensor_from_vec(wt.clone(), (wt.len(),));
        let y = if composed {
            let zero = dev.tensor_from_vec(vec![0.0; c_out], (c_out,));
            let full = conv::conv3x3(
                xt.leaky_trace(),
                wt_t.leaky_trace(),
                zero.leaky_trace(),
                &pool,
            )
            .unwrap();
            subsample2(&dev, full)
        } else {
            conv_strided::conv_strided(xt.leaky_trace(), wt_t.leaky_trace(), (c_out, 3, 2), &pool)
                .unwrap()
        };
        let yv = y.as_vec();
        let g = (y * dev.tensor_from_vec(r.clone(), (n, c_out, h / 2, w / 2)))
            .sum::<Rank0, _>()
            .backward();
        (yv, g.get(&xt).as_vec(), g.get(&wt_t).as_vec())
    };
    let (a, b) = (run(false), run(true));
    assert_close("3x3/2 y", &a.0, &b.0, 1e-6);
    assert_close("3x3/2 dx", &a.1, &b.1, 1e-6);
    assert_close("3x3/2 dw", &a.2, &b.2, 1e-6);

    // 1×1 = a matmul over channels: x → [N·H·W, C_in] · Wᵀ → [N, C_out, H, W]; stride 2 on the
    // subsampled input.
    let w1 = random(&mut rng, c_out * c_in);
    for stride in [1, 2] {
        let (oh, ow) = (h / stride, w / stride);
        let rr = if stride == 1 { &r1 } else { &r };
        let run = |composed: bool| {
            let xt = dev.tensor_from_vec(x.clone(), (n, c_in, h, w));
            let wt_t = dev.tensor_from_vec(w1.clone(), (w1.len(),));
            let y = if composed {
                let xs = if stride == 2 {
                    subsample2(&dev, xt.leaky_trace())
                } else {
                    xt.leaky_trace()
                };
                let rows = xs
                    .permute::<S4, Axes4<0, 2, 3, 1>>()
                    .reshape_like(&(n * oh * ow, c_in));
                let wm = wt_t
                    .leaky_trace()
                    .reshape_like(&(c_out, c_in))
                    .permute::<(usize, usize), Axes2<1, 0>>();
                rows.matmul(wm)
                    .reshape_like(&(n, oh, ow, c_out))
                    .permute::<S4, Axes4<0, 3, 1, 2>>()
            } else {
                conv_strided::conv_strided(
                    xt.leaky_trace(),
                    wt_t.leaky_trace(),
                    (c_out, 1, stride),
                    &pool,
                )
                .unwrap()
            };
            let yv = y.as_vec();
            let g = (y * dev.tensor_from_vec(rr.clone(), (n, c_out, oh, ow)))
                .sum::<Rank0, _>()
                .backward();
            (yv, g.get(&xt).as_vec(), g.get(&wt_t).as_vec())
        };
        let (a, b) = (run(false), run(true));
        assert_close(&format!("1x1/{stride} y"), &a.0, &b.0, 1e-5);
        assert_close(&format!("1x1/{stride} dx"), &a.1, &b.1, 1e-5);
        assert_close(&format!("1x1/{stride} dw"), &a.2, &b.2, 1e-5);
    }
}

#[test]
fn add_relu_and_shares_match_dfdx() {
    let dev = Cpu::default();
    let pool = BufferPool::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let s: S4 = (4, 3, 5, 2);
    let len = 4 * 3 * 5 * 2;
    let (a, b, r) = (
        random(&mut rng, len),
        random(&mut rng, len),
        random(&mut rng, len),
    );
    let run = |composed: bool| {
        let at = dev.tensor_from_vec(a.clone(), s);
        let bt = dev.tensor_from_vec(b.clone(), s);
        let y = if composed {
            (at.leaky_trace() + bt.leaky_trace()).relu()
        } else {
            residual::add_relu(at.leaky_trace(), bt.leaky_trace(), &pool).unwrap()
        };
        let yv = y.as_vec();
        let g = (y * dev.tensor_from_vec(r.clone(), s))
            .sum::<Rank0, _>()
            .backward();
        (yv, g.get(&at).as_vec(), g.get(&bt).as_vec())
    };
    assert_eq!(run(false), run(true), "add_relu");

    // split → (×2 on share 1) → concat against the same scaling done by a mask.
    let run = |composed: bool| {
        let at = dev.tensor_from_vec(a.clone(), s);
        let y = if composed {
            let m: Vec<f32> = (0..len)
                .map(|i| if i >= len / 2 { 2.0 } else { 1.0 })
                .collect();
            at.leaky_trace() * dev.tensor_from_vec(m, s)
        } else {
            let mut parts = shares::split_batch(at.leaky_trace(), 2, &pool).unwrap();
            assert_eq!(*parts[1].shape(), (2, 3, 5, 2));
            let p1 = parts.pop().unwrap() * 2.0;
            let p0 = parts.pop().unwrap();
            shares::concat_batch(vec![p0, p1], &pool).unwrap()
        };
        let yv = y.as_vec();
        let g = (y * dev.tensor_from_vec(r.clone(), s))
            .sum::<Rank0, _>()
            .backward();
        (yv, g.get(&at).as_vec())
    };
    assert_eq!(run(false), run(true), "split/concat");
}

fn tiny(arch: Arch, norm: NormChoice) -> ModelConfig {
    ModelConfig {
        arch,
        width: 0.25,
        ..ModelConfig::new([16, 32, 64], norm, 2, 1e-5)
    }
}

#[test]
fn parameter_names_follow_pytorch() {
    let m = Model::new(&tiny(Arch::Resnet8, NormChoice::Norm(NormKind::Batch)), 0).unwrap();
    let names: Vec<&str> = m.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "norm1.weight",
            "norm1.bias",
            "layer1.0.conv1.weight",
            "layer1.0.norm1.weight",
            "layer1.0.norm1.bias",
            "layer1.0.conv2.weight",
            "layer1.0.norm2.weight",
            "layer1.0.norm2.bias",
            "layer2.0.conv1.weight",
            "layer2.0.norm1.weight",
            "layer2.0.norm1.bias",
            "layer2.0.conv2.weight",
            "layer2.0.norm2.weight",
            "layer2.0.norm2.bias",
            "layer2.0.shortcut.0.weight",
            "layer2.0.shortcut.1.weight",
            "layer2.0.shortcut.1.bias",
            "layer3.0.conv1.weight",
            "layer3.0.norm1.weight",
            "layer3.0.norm1.bias",
            "layer3.0.conv2.weight",
            "layer3.0.norm2.weight",
            "layer3.0.norm2.bias",
            "layer3.0.shortcut.0.weight",
            "layer3.0.shortcut.1.weight",
            "layer3.0.shortcut.1.bias",
            "fc.weight",
            "fc.bias",
        ]
    );
    let shape = |n: &str| {
        m.params()
            .iter()
            .find(|p| p.name == n)
            .unwrap()
            .shape
            .clone()
    };
    assert_eq!(shape("layer2.0.conv1.weight"), [8, 4, 3, 3]);
    assert_eq!(shape("layer2.0.shortcut.0.weight"), [8, 4, 1, 1]);
    assert_eq!(shape("fc.weight"), [10, 16]);
    assert_eq!(m.running_names().len(), 9);
    assert_eq!(m.running_names()[7], "layer3.0.norm2");
    // Depth: 6n + 2 weighted layers (the shortcuts' 1×1 convs not counted).
    for (arch, depth) in [
        (Arch::Resnet8, 8),
        (Arch::Resnet14, 14),
        (Arch::Resnet20, 20),
    ] {
        let m = Model::new(&tiny(arch, NormChoice::Norm(NormKind::Group)), 0).unwrap();
        let convs = m
            .params()
            .iter()
            .filter(|p| p.shape.len() == 4 && !p.name.contains("shortcut"))
            .count();
        assert_eq!(convs + 1, depth, "{arch}");
        // LayerNorm's affine is per element of each stage's maps.
        let m = Model::new(&tiny(arch, NormChoice::Norm(NormKind::Layer)), 0).unwrap();
        let p = m
            .params()
            .iter()
            .find(|p| p.name == "layer3.0.norm1.weight")
            .unwrap();
        assert_eq!(p.shape, [16, 8, 8]);
    }
}

#[test]
fn resnet_checkpoint_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.safetensors");
    let cfg = tiny(Arch::Resnet14, NormChoice::Norm(NormKind::Batch));
    let mut m = Model::new(&cfg, 3).unwrap();
    let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|i| (i % 7) as f32 - 3.0).collect();
    m.loss_and_grads(&x, &[1, 2]).unwrap(); // moves the running statistics
    let meta = crate::checkpoint::CheckpointMeta {
        normalizer: crate::data::Normalizer {
            mean: [0.5; 3],
            std: [0.25; 3],
        },
        data: None,
    };
    crate::checkpoint::save(&path, &m, &meta).unwrap();
    let mut back = crate::checkpoint::load(&path).unwrap().model;
    assert_eq!(back.config(), &cfg);
    assert_eq!(back.params(), m.params());
    assert_eq!(back.running(), m.running());
    m.eval_mode();
    assert_eq!(back.logits(&x, 2).unwrap(), m.logits(&x, 2).unwrap());
    let header = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&header);
    assert!(
        text.contains(r#"\"arch\":\"resnet14\""#) && text.contains(r#"\"width\":0.25"#),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&header).contains("layer2.0.shortcut.1.running_var"));
}

/// Images whose class is the contrast between their top and bottom halves in each colour plane
/// (one of 10 RGB levels) under heavy per-pixel noise: every plane's mean is the same, so a norm
/// that removes per-sample means (GroupNorm) loses nothing. Learnable in a few hundred steps by
/// any model whose gradients flow, unlike the synthetic set (see `tests/learns.rs`, which needs
/// 20,000 image-steps of the plain CNN).
fn contrast_classes(seed: u64, len: usize) -> data::Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = Vec::with_capacity(len * data::IMAGE_BYTES);
    let mut labels = Vec::with_capacity(len);
    let half = data::PLANE / 2;
    for i in 0..len {
        let l = i % 10;
        let levels = [l % 3, (l / 3) % 3, l / 9];
        for level in levels {
            let contrast = 20 + 40 * level as i32;
            for p in 0..data::PLANE {
                let sign = if p < half { 1 } else { -1 };
                let v = 128 + sign * contrast + rng.random_range(-40..=40);
                images.push(v.clamp(0, 255) as u8);
            }
        }
        labels.push(l as u8);
    }
    data::Dataset { images, labels }
}

/// Short runs of every ResNet (width 1/4) learn well above chance with BatchNorm over 4
/// workers, and ResNet-8 with GroupNorm. GroupNorm over 2 to 8 channels per group learns slowly
/// on this task and the deeper tiny GroupNorm ResNets can stall at this budget (their gradients
/// equal PyTorch's, `tools/torch_twin.py --check-grads`), so GroupNorm runs at width 1/2 for
/// 6 epochs, on ResNet-8.
#[test]
fn every_resnet_learns() {
    let split = data::Split {
        train: contrast_classes(1, 640),
        test: contrast_classes(2, 200),
    };
    let mut failures = Vec::new();
    let (bn, gn) = (
        NormChoice::Norm(NormKind::Batch),
        NormChoice::Norm(NormKind::Group),
    );
    for (arch, norm) in [
        (Arch::Resnet8, bn),
        (Arch::Resnet14, bn),
        (Arch::Resnet20, bn),
        (Arch::Resnet8, gn),
    ] {
        let epochs = if norm == gn { 6 } else { 4 };
        let mut cfg = TrainConfig {
            epochs,
            batch: 32,
            base_lr: 0.05,
            ..TrainConfig::default()
        };
        cfg.model = tiny(arch, norm);
        cfg.warmup_epochs = 0.5;
        cfg.augment = data::Augment::NONE;
        if norm == gn {
            cfg.model.width = 0.5;
        } else {
            cfg.workers = 4;
        }
        let out = train(&cfg, &split, &mut |_| {}).unwrap();
        let accs: Vec<f32> = out.epochs.iter().map(|e| e.test_acc).collect();
        let losses: Vec<f32> = out.epochs.iter().map(|e| e.train_loss).collect();
        eprintln!("{arch} {norm}: train loss {losses:.3?}, test acc {accs:.3?}");
        // 200 test images: chance is 10 % ± 2 %. Accuracy moves in steps of whole classes
        // (a contrast level learnt or not), so the best epoch counts, with a falling loss.
        if out.best_test_acc() < 0.3 || losses[epochs - 1] > losses[0] - 0.2 {
            failures.push(format!("{arch} {norm}: loss {losses:?}, accuracy {accs:?}"));
        }
    }
    assert!(failures.is_empty(), "did not learn: {failures:#?}");
}

/// Running statistics re-estimated from one batch make eval mode on that batch what train mode
/// computes on it, in every BatchNorm layer of a ResNet (up to the unbiased variance's factor
/// `M / (M − 1)`, `M ≥ 32·8·8`).
#[test]
fn recalibrated_resnet_eval_equals_train_mode_on_the_same_batch() {
    let set = contrast_classes(3, 32);
    let norm = data::Normalizer::from_dataset(&set);
    let cfg = ModelConfig {
        arch: Arch::Resnet8,
        width: 0.5,
        ..ModelConfig::new([16, 32, 64], NormChoice::Norm(NormKind::Batch), 2, 1e-5)
    };
    let mut model = Model::new(&cfg, 3).unwrap();
    let mut x = vec![0.0f32; 32 * data::IMAGE_BYTES];
    let mut labels = vec![0usize; 32];
    let idx: Vec<usize> = (0..32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    data::fill_batch(
        &set,
        &idx,
        &norm,
        &data::Augment::NONE,
        &mut rng,
        &mut x,
        &mut labels,
    );
    model.train_mode();
    let train = model.logits(&x, 32).unwrap();
    model
        .recalibrate_batch_norm(
            &set,
            &norm,
            crate::Recalibrate {
                images: 32,
                batch: 32,
                augment: data::Augment::NONE,
            },
        )
        .unwrap();
    assert!(!model.is_training());
    assert!(model.running().iter().all(|r| r.num_batches_tracked == 1));
    let eval = model.logits(&x, 32).unwrap();
    let scale = train.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in train.iter().zip(&eval).enumerate() {
        assert!(
            (a - b).abs() <= 2e-3 * scale,
            "logit {i}: train {a} eval {b}"
        );
    }
}
