//! Results do not depend on the machine's cache sizes, streamed outputs included: every norm's
//! forward and backward, train and eval, run in a child process that believes its last-level
//! cache is 4 KiB (`NORMLAB_L3`, so every output is written with streaming stores and every
//! cache-derived walk changes), give bit for bit what this process computes with its own
//! caches.

mod common;

use std::process::Command;

use common::described::{described, every_norm, inputs};
use norm_kernels::*;

/// Set in the child: print the digests instead of comparing.
const CHILD: &str = "NORMLAB_STREAMED_TEST_CHILD";

/// FNV-1a over every bit the call wrote: y, saved values, running statistics, dx, dγ, dβ.
fn digest(norm: &Norm, mode: Mode, shape: Nchw, par: Parallelism) -> u64 {
    let o = described(norm, mode, shape, &inputs(norm, shape, 1), par);
    let words = [
        &o.y,
        &o.saved,
        &o.running.0,
        &o.running.1,
        &o.dx,
        &o.dgamma,
        &o.dbeta,
    ];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in words
        .into_iter()
        .flatten()
        .copied()
        .chain([o.running.2 as u32])
    {
        h = (h ^ w as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// One line per case: `case <name> <digest>`.
fn digests() -> Vec<String> {
    let mut out = Vec::new();
    // Odd planes (outputs start anywhere relative to 32 bytes), and aligned ones.
    for shape in [Nchw::new(3, 16, 17, 19), Nchw::new(2, 32, 32, 32)] {
        for norm in every_norm() {
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
