//! Where the caller's buffers start changes no bit: every norm's forward and backward, train
//! and eval, with `x`, `dy` and `y`, `dx` shifted by every offset from a 32-byte boundary, give
//! what the unshifted call gives (the output passes start their vectors on the boundary, with a
//! head before it, and the reductions follow the data's indices, not addresses).

mod common;

use common::described::{described_at, every_norm, inputs};
use norm_kernels::*;

#[test]
fn buffer_offsets_change_no_bit() {
    let norms = every_norm();
    // Planes long enough for the output passes' aligned head, and odd ones.
    for shape in [Nchw::new(2, 16, 16, 20), Nchw::new(3, 8, 17, 19)] {
        for norm in &norms {
            for mode in [Mode::Train, Mode::Eval] {
                for par in [Parallelism::None, Parallelism::Rayon] {
                    let inp = inputs(norm, shape, 7);
                    let base = described_at(norm, mode, shape, &inp, par, (0, 0));
                    for at in [(1, 1), (2, 2), (3, 3), (4, 4), (7, 7), (0, 5), (6, 1)] {
                        let o = described_at(norm, mode, shape, &inp, par, at);
                        let case = format!("{} {mode:?} {shape} {par:?} at {at:?}", norm.label());
                        assert!(o == base, "{case}: bits differ from the unshifted call");
                    }
                }
            }
        }
    }
}
