//! The descriptor [`Norm`]: `Norm::forward` / `Norm::backward` give bit for bit what the free
//! functions give, for every norm in train and eval mode (running statistics updated the same
//! way, the saved values laid out as documented), and a call that disagrees with the settings
//! fails with `NormError::Settings`.

mod common;

use common::check::bits;
use common::described::{Inputs, Outs, bufs, described, inputs};
use norm_kernels::*;

/// The forward and backward through the free functions, as a caller that knows the norm and
/// the mode would call them.
fn free(norm: &Norm, mode: Mode, shape: Nchw, inp: &Inputs, par: Parallelism) -> Outs {
    let params = norm.affine_shape(shape).iter().product();
    let (affine, gamma) = (inp.affine(norm), inp.gamma(norm));
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 3u64);
    let eval_running = mode == Mode::Eval && norm.tracks_running();
    let st = if eval_running {
        shape.c
    } else {
        norm.stats_len(shape)
    };
    let [mut y, mut mean, mut rstd, mut dx, mut dg, mut db] = bufs(shape, st, params);
    let grads = Grads {
        dx: &mut dx,
        affine: Some(AffineGrads {
            dgamma: &mut dg,
            dbeta: &mut db,
        }),
    };
    if eval_running {
        // Eval with running statistics: the fixed map; the saved values are a copy of them.
        mean.copy_from_slice(&inp.rm);
        rstd.copy_from_slice(&inp.rv);
        let running = Running {
            mean: &inp.rm,
            var: &inp.rv,
        };
        let saved = Saved {
            x: &inp.x,
            stats: running,
        };
        let (x, dy) = (&inp.x[..], &inp.dy[..]);
        match norm {
            Norm::Batch(s) => {
                batch_norm_forward_eval(s, shape, x, affine, running, &mut y, par).unwrap();
                batch_norm_backward_eval(s, shape, saved, dy, gamma, grads, par).unwrap();
            }
            Norm::Instance(s) => {
                instance_norm_forward_eval(s, shape, x, affine, running, &mut y, par).unwrap();
                instance_norm_backward_eval(s, shape, saved, dy, gamma, grads, par).unwrap();
            }
            _ => unreachable!("{norm:?} tracks no running statistics"),
        }
    } else {
        // Train mode, and eval mode without running statistics (the same computation).
        let running = norm.tracks_running().then_some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
            num_batches_tracked: &mut nbt,
        });
        let out = Output {
            y: &mut y,
            stats: StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            },
        };
        let (x, dy) = (&inp.x[..], &inp.dy[..]);
        match norm {
            Norm::Batch(s) => batch_norm_forward_train(s, shape, x, affine, running, out, par),
            Norm::Instance(s) => {
                instance_norm_forward_train(s, shape, x, affine, running, out, par)
            }
            Norm::Layer(s) => layer_norm_forward(s, shape, x, affine, out, par),
            Norm::Group(s) => group_norm_forward(s, shape, x, affine, out, par),
            Norm::BatchRenorm(_) => unreachable!("BatchRenorm's own test covers it"),
        }
        .unwrap();
        let saved = Saved {
            x,
            stats: Stats {
                mean: &mean,
                rstd: &rstd,
            },
        };
        match norm {
            Norm::Batch(s) => batch_norm_backward_train(s, shape, saved, dy, gamma, grads, par),
            Norm::Instance(s) => {
                instance_norm_backward_train(s, shape, saved, dy, gamma, grads, par)
            }
            Norm::Layer(s) => layer_norm_backward(s, shape, saved, dy, gamma, grads, par),
            Norm::Group(s) => group_norm_backward(s, shape, saved, dy, gamma, grads, par),
            Norm::BatchRenorm(_) => unreachable!("BatchRenorm's own test covers it"),
        }
        .unwrap();
    }
    Outs {
        y: bits(&y),
        saved: bits(&[mean, rstd].concat()),
        running: (bits(&rm), bits(&rv), nbt),
        dx: bits(&dx),
        dgamma: bits(&dg),
        dbeta: bits(&db),
    }
}

/// Every norm with default settings and with the settings that change its path.
fn norms() -> Vec<Norm> {
    let batch = BatchNorm::default();
    let instance = InstanceNorm::default();
    vec![
        Norm::Batch(batch),
        Norm::Batch(BatchNorm {
            momentum: Momentum::CumulativeAverage,
            ..batch
        }),
        Norm::Batch(BatchNorm {
            track_running_stats: false,
            affine: false,
            ..batch
        }),
        Norm::Instance(instance),
        Norm::Instance(InstanceNorm {
            affine: true,
            track_running_stats: true,
            momentum: Momentum::Exponential(0.3),
            ..instance
        }),
        Norm::Layer(LayerNorm::default()),
        Norm::Layer(LayerNorm {
            eps: 1e-8,
            affine: false,
        }),
        Norm::Group(GroupNorm::new(2)),
        Norm::Group(GroupNorm {
            affine: false,
            ..GroupNorm::new(4)
        }),
    ]
}

#[test]
fn descriptor_equals_free_functions_bit_for_bit() {
    // Small odd planes; and planes long enough for the nested (tiled) paths.
    for shape in [Nchw::new(3, 4, 5, 7), Nchw::new(2, 4, 150, 130)] {
        for norm in norms() {
            let inp = inputs(&norm, shape, 17);
            for mode in [Mode::Train, Mode::Eval] {
                for par in [Parallelism::None, Parallelism::Rayon] {
                    let want = free(&norm, mode, shape, &inp, par);
                    let got = described(&norm, mode, shape, &inp, par);
                    assert!(
                        got == want,
                        "{} ({}) {shape} {mode:?} {par:?}: descriptor and free functions differ",
                        norm.spec(),
                        norm.label()
                    );
                    assert!(
                        !want.y.iter().any(|&b| f32::from_bits(b).is_nan()),
                        "{}: y not written",
                        norm.spec()
                    );
                }
            }
        }
    }
}

/// A descriptor call with affine parameters the settings do not announce, or without running
/// statistics the settings track, fails with `NormError::Settings` in both modes.
#[test]
fn descriptor_rejects_calls_that_disagree_with_the_settings() {
    let shape = Nchw::new(2, 4, 3, 5);
    for norm in norms() {
        let inp = inputs(&norm, shape, 5);
        for mode in [Mode::Train, Mode::Eval] {
            let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 0u64);
            let mut y = vec![0.0; shape.len()];
            let mut saved = vec![0.0; norm.saved_len(shape, mode)];
            // Affine given exactly when the settings say none.
            let flipped = Some(Affine {
                gamma: &inp.gamma,
                beta: &inp.beta,
            })
            .filter(|_| !norm.affine());
            let fwd = Forward {
                shape,
                x: &inp.x,
                affine: flipped,
                running: norm.tracks_running().then_some(RunningStats {
                    mean: &mut rm,
                    var: &mut rv,
                    num_batches_tracked: &mut nbt,
                }),
                y: &mut y,
                saved: &mut saved,
            };
            let got = norm.forward(mode, fwd, Parallelism::None);
            assert!(
                matches!(got, Err(NormError::Settings { .. })),
                "{} {mode:?} affine flipped: {got:?}",
                norm.spec()
            );
            assert_eq!(nbt, 0, "{}: a rejected call counted a batch", norm.spec());

            let mut dx = vec![0.0; shape.len()];
            let bwd = Backward {
                shape,
                x: &inp.x,
                dy: &inp.dy,
                saved: &saved,
                gamma: (!norm.affine()).then_some(&inp.gamma[..]),
                grads: Grads {
                    dx: &mut dx,
                    affine: None,
                },
            };
            let got = norm.backward(mode, bwd, Parallelism::None);
            assert!(
                matches!(got, Err(NormError::Settings { .. })),
                "{} {mode:?} backward gamma flipped: {got:?}",
                norm.spec()
            );

            if norm.tracks_running() {
                let mut saved = vec![0.0; norm.saved_len(shape, mode)];
                let fwd = Forward {
                    shape,
                    x: &inp.x,
                    affine: inp.affine(&norm),
                    running: None,
                    y: &mut y,
                    saved: &mut saved,
                };
                let got = norm.forward(mode, fwd, Parallelism::None);
                assert!(
                    matches!(got, Err(NormError::Settings { .. })),
                    "{} {mode:?} without running statistics: {got:?}",
                    norm.spec()
                );
            }
        }
    }
}

/// LayerNorm and GroupNorm track no running statistics, so a descriptor call that passes some
/// disagrees with the settings as much as a BatchNorm call without them does.
#[test]
fn descriptor_rejects_running_stats_for_norms_without_them() {
    let shape = Nchw::new(2, 4, 3, 5);
    for norm in norms().into_iter().filter(|n| !n.tracks_running()) {
        let inp = inputs(&norm, shape, 6);
        for mode in [Mode::Train, Mode::Eval] {
            let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 0u64);
            let mut y = vec![0.0; shape.len()];
            let mut saved = vec![0.0; norm.saved_len(shape, mode)];
            let fwd = Forward {
                shape,
                x: &inp.x,
                affine: inp.affine(&norm),
                running: Some(RunningStats {
                    mean: &mut rm,
                    var: &mut rv,
                    num_batches_tracked: &mut nbt,
                }),
                y: &mut y,
                saved: &mut saved,
            };
            let got = norm.forward(mode, fwd, Parallelism::None);
            assert!(
                matches!(got, Err(NormError::Settings { .. })),
                "{} {mode:?} with running statistics: {got:?}",
                norm.spec()
            );
        }
    }
}
