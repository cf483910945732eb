//! batch_norm (in progress)
