//! reference twin: layer (in progress)
