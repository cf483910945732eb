//! group_norm (in progress)
