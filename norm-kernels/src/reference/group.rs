//! reference twin: group (in progress)
