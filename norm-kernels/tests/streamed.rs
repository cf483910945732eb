//! Results do not depend on the machine's cache sizes, streamed outputs included: every norm's
//! forward and backward, train and eval, run in a child process that believes its last-level
//! cache is 4 KiB (`NORMLAB_L3`, so every output is written with streaming stores and every
//! cache-derived walk changes), give bit for bit what this process computes with its own
//! caches.

mod common;

use std::process::Command;

use common::check::{bits, data};
use norm_kernels::*;

/// Set in the child: print the digests instead of comparing.
const CHILD: &str = "NORMLAB_STREAMED_TEST_CHILD";

fn norms() -> Vec<Norm> {
    vec![
        Norm::Batch(BatchNorm::default()),
        Norm::Layer(LayerNorm::default()),
        Norm::Instance(InstanceNorm {
            track_running_stats: true,
            ..InstanceNorm::default()
        }),
        Norm::Group(GroupNorm::new(8)),
        Norm::BatchRenorm(BatchRenorm::default()),
    ]
}

/// FNV-1a over every bit the call wrote: y, saved values, running statistics, dx, dγ, dβ.
fn digest(norm: &Norm, mode: Mode, shape: Nchw, par: Parallelism) -> u64 {
    let params: usize = norm.affine_shape(shape).iter().product();
    let x = data(shape.len(), 1, 1.0, 5.0);
    let dy = data(shape.len(), 2, -1.0, 1.0);
    let (gamma, beta) = (data(params, 3, 0.5, 1.5), data(params, 4, -0.5, 0.5));
    let (mut rm, mut rv, mut nbt) = (data(shape.c, 5, 2.0, 4.0), data(shape.c, 6, 0.5, 2.0), 3);
    let mut saved = vec![f32::NAN; norm.saved_len(shape, mode)];
    let (mut y, mut dx) = (vec![f32::NAN; shape.len()], vec![f32::NAN; shape.len()]);
    let (mut dg, mut db) = (vec![f32::NAN; params], vec![f32::NAN; params]);
    let affine = norm.affine().then_some(Affine {
        gamma: &gamma,
        beta: &beta,
    });
    let running = norm.tracks_running().then_some(RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    });
    let fwd = Forward {
        shape,
        x: &x,
        affine,
        running,
        y: &mut y,
        saved: &mut saved,
    };
    norm.forward(mode, fwd, par).unwrap();
    let bwd = Backward {
        shape,
        x: &x,
        dy: &dy,
        saved: &saved,
        gamma: norm.affine().then_some(&gamma[..]),
        grads: Grads {
            dx: &mut dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        },
    };
    norm.backward(mode, bwd, par).unwrap();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in [&y, &saved, &rm, &rv, &dx, &dg, &db] {
        for b in bits(v) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// One line per case: `case <name> <digest>`.
fn digests() -> Vec<String> {
    let mut out = Vec::new();
    // Odd planes (outputs start anywhere relative to 32 bytes), and aligned ones.
    for shape in [Nchw::new(3, 16, 17, 19), Nchw::new(2, 32, 32, 32)] {
        for norm in norms() {
            for mode in [Mode::Train, Mode::Eval] {
                for par in [Parallelism::None, Parallelism::Rayon] {
                    let d = digest(&norm, mode, shape, par);
                    out.push(format!("case {norm:?}/{mode:?}/{shape:?}/{par:?} {d:016x}"));
                }
            }
        }
    }
    out
}

#[test]
fn streamed_and_cache_derived_walks_write_the_same_bits() {
    if std::env::var_os(CHILD).is_some() {
        for line in digests() {
            println!("{line}");
        }
        return;
    }
    let largest = 2 * 32 * 32 * 32 * 4;
    assert!(
        cache_sizes().l3 > largest,
        "this process would stream too; the test needs an L3 above {largest} bytes"
    );
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "streamed_and_cache_derived_walks_write_the_same_bits",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("NORMLAB_L1D", "4K")
        .env("NORMLAB_L2", "4K")
        .env("NORMLAB_L3", "4K")
        .output()
        .unwrap();
    assert!(child.status.success(), "child failed: {child:?}");
    let theirs: Vec<String> = String::from_utf8(child.stdout)
        .unwrap()
        .lines()
        // libtest's "test <name> ... " may precede the first line.
        .filter_map(|l| l.find("case ").map(|i| l[i..].to_string()))
        .collect();
    let ours = digests();
    assert_eq!(theirs.len(), ours.len(), "the child printed {theirs:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "cached (left) against streamed, 4 KiB caches (right)");
    }
}
