//! Exit codes and the error type that carries one.

use std::fmt;

/// What the process exit code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Something failed.
    Failure = 1,
    /// The input (arguments, JSON, a manifest) is wrong.
    BadInput = 2,
    /// The command needs a running nucleus and none runs.
    NotRunning = 3,
    /// The named thing does not exist.
    NotFound = 4,
}

/// An error with a chosen exit code.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub code: ExitCode,
    /// The message (lowercase start, says what to do).
    pub message: String,
}

impl CliError {
    /// A new error.
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Shorthand for a bad-input error.
pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
    CliError::new(ExitCode::BadInput, message).into()
}
