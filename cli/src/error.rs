//! The CLI's one error type: unusable input (exit code 2).
//!
//! A configuration that is valid but does not fit is not an error here: it is
//! a plan with a "does not fit" verdict (exit code 1), see `plan.rs`.

use std::fmt;

/// Input the tool cannot use: a missing or malformed flag, config file or field.
///
/// The message is one line that names the offending flag or config field and
/// says what would work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The flag (`--gpu`) or config field (`num_hidden_layers`) at fault.
    pub field: String,
    /// What is wrong and what to do instead.
    pub reason: String,
}

impl InputError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InputError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InputError {}
