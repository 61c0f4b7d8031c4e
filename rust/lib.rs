//! Rust core of zcache.
//!
//! The core modules are plain Rust and never touch PyO3, so `cargo test` runs without a Python
//! interpreter. The only binding code lives in `py/`, compiled when the `python` feature is on
//! (maturin enables it).

pub mod error;
pub mod ivm;
pub mod pg;
pub mod replica;
pub mod version;

#[cfg(feature = "python")]
mod py;
