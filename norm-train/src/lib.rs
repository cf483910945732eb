//! placeholder: modules arrive with the training work.
pub mod data;
