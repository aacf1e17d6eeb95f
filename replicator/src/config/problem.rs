//! One problem found in a config or policy file: where (its JSON path), what, and how to fix it.
//!
//! Invariant: displayed on one line (line breaks in any part become spaces), so a problem list is
//! one problem per line whatever the document held.
use std::fmt;

/// One problem in a config or policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path, e.g. `policies[0].filters[1].value`; empty for the whole document.
    pub path: String,
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

/// `<path>: <message> (hint: <hint>)` on one line; the document root is shown as `$`.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one_line = |s: &str| s.replace(['\r', '\n'], " ");
        let path = if self.path.is_empty() {
            "$"
        } else {
            &self.path
        };
        write!(f, "{}: {}", one_line(path), one_line(&self.message))?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {})", one_line(hint))?;
        }
        Ok(())
    }
}
