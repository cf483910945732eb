//! layer_norm (in progress)
