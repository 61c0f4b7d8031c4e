//! The one error type of the Rust core. Every variant has a stable code, which the binding maps to a
//! Python exception class of the same name (see `py/errors.rs`).

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that do not form a valid message of the protocol they claim to be.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

impl Error {
    /// Stable machine-readable code; also the name of the Python exception class.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed { .. } => "MalformedError",
        }
    }
}
