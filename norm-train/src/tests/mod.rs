//! Tests that need the crate's private tape ops (`ops`), which are not part of its public API
//! because they are written in dfdx's types.

mod conv3x3_timing;
mod determinism;
mod ops;
mod resnet;
