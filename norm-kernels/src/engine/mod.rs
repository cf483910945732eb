//! The engines the norms are built from, below every norm module: task scheduling, the
//! statistics of a slice, the per-plane engine (BatchNorm, BatchRenorm, InstanceNorm: one
//! normalisation group per channel or plane, a per-channel affine) and the grouped engine
//! (GroupNorm, LayerNorm: contiguous groups of consecutive planes of one sample).

pub(crate) mod grouped;
pub(crate) mod moments;
pub(crate) mod plane;
pub(crate) mod schedule;
