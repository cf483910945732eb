//! Scalar f64 reference twins of every kernel: plain loops, no SIMD, no threads, written straight
//! from the formulas. They are the oracle the tests hold the fast kernels against; they take and
//! return `f64` so that their own rounding is negligible.

mod batch;
mod group;
mod instance;
mod layer;

pub use batch::*;
pub use group::*;
pub use instance::*;
pub use layer::*;
