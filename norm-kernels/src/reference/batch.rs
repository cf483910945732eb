//! reference twin: batch (in progress)
