//! instance_norm (in progress)
