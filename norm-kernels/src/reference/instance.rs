//! reference twin: instance (in progress)
