//! How `ferry admin` answers: `-o table` or `-o json` on stdout, a [`Failure`] on stderr with its
//! exit code, and the pieces every table is made of.
//!
//! Invariants: stdout carries either the table or exactly one JSON document; a closed pipe
//! (`| head`) is not an error; table cells are one line each (newlines become spaces); the exit
//! code of a gRPC status is the one the table in the module above documents.
pub use ferry_replicator::errors::error_chain;
use std::fmt;
use std::io::Write as _;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints the answer: `doc` with `-o json`, else the table `table` makes (nothing when empty).
pub fn emit(format: Format, doc: &impl Serialize, table: impl FnOnce() -> String) {
    match format {
        Format::Json => out(&serde_json::to_string_pretty(&to_json(doc)).unwrap_or_default()),
        Format::Table => {
            let t = table();
            if !t.is_empty() {
                out(&t);
            }
        }
    }
}

/// `doc` as a JSON value. Printing goes through it on purpose: serde_json's map keeps keys sorted,
/// so a document prints with sorted keys whatever order its struct declares them in (the order
/// `-o json` has always had). Serializing the admin API's messages cannot fail; if it did, `null`.
pub fn to_json(doc: &impl Serialize) -> Value {
    serde_json::to_value(doc).unwrap_or(Value::Null)
}

/// Writes a line to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn out(s: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{s}");
}

// ---------------------------------------------------------------------------------------------
// Errors and exit codes

/// Why a command failed, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: u8,
    /// What was attempted: `get policy x`.
    pub what: String,
    /// The gRPC status code, when the server (or the transport) gave one.
    pub code: Option<Code>,
    pub message: String,
}

impl Failure {
    pub fn status(what: &str, status: &Status) -> Failure {
        let exit = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => 3,
            Code::NotFound => 4,
            Code::Unavailable => 5,
            _ => 2,
        };
        let mut message = status.message().to_string();
        if let Some(source) = std::error::Error::source(status) {
            let chain = error_chain(source);
            if !message.contains(&chain) {
                message = if message.is_empty() {
                    chain
                } else {
                    format!("{message}: {chain}")
                };
            }
        }
        if message.is_empty() {
            message = status.code().description().to_string();
        }
        Failure {
            exit,
            what: what.to_string(),
            code: Some(status.code()),
            message,
        }
    }

    /// A usage or local error (exit 2).
    pub fn other(what: &str, message: String) -> Failure {
        Failure {
            exit: 2,
            what: what.to_string(),
            code: None,
            message,
        }
    }

    pub fn report(&self) {
        let _ = writeln!(std::io::stderr().lock(), "error: {self}");
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            // The server lists every field violation, one per line: keep them as they are.
            Some(Code::InvalidArgument) if self.message.contains('\n') => {
                write!(f, "{} (INVALID_ARGUMENT):\n{}", self.what, self.message)
            }
            Some(code) => write!(
                f,
                "{} ({}): {}",
                self.what,
                code_name(code),
                one_line(&self.message)
            ),
            None => write!(f, "{}: {}", self.what, one_line(&self.message)),
        }
    }
}

/// The canonical gRPC name of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ---------------------------------------------------------------------------------------------
// Tables and cells

pub fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

pub fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all = vec![header.iter().map(|c| c.to_string()).collect()];
    all.extend(rows);
    align(all)
}

/// Rows as columns padded to their widest cell, two spaces apart; newlines in cells become
/// spaces.
pub fn align(rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(|c| one_line(&c)).collect())
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            let w = c.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i + 1 < r.len() {
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_string()
        })
        .collect();
    lines.join("\n")
}

pub fn one_line(s: &str) -> String {
    s.trim().replace(['\r', '\n'], " ")
}

pub fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

pub fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `repo:tag` or `repo@sha256:…`.
pub fn reference(repository: &str, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repository}@{reference}")
    } else {
        format!("{repository}:{reference}")
    }
}

/// `sha256:0123456789ab` (12 hex digits are enough to tell digests apart in a table).
pub fn short_digest(d: &str) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.char_indices()
        .nth(d.find(':').map_or(12, |i| i + 13))
        .map_or_else(|| d.to_string(), |(i, _)| d[..i].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_columns() {
        let t = table(
            &["A", "BB"],
            [row(["xyz", "1"]), row(["q", ""])].into_iter(),
        );
        assert_eq!(t, "A    BB\nxyz  1\nq");
    }

    #[test]
    fn short_digests() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("sha256:01"), "sha256:01");
        assert_eq!(short_digest(""), "-");
    }

    #[test]
    fn status_lines_and_exit_codes() {
        let f = Failure::status("get policy x", &Status::not_found("no policy named \"x\""));
        assert_eq!(f.exit, 4);
        assert_eq!(
            f.to_string(),
            "get policy x (NOT_FOUND): no policy named \"x\""
        );
        let f = Failure::status(
            "apply policy p",
            &Status::invalid_argument("a: bad\nb.c: bad"),
        );
        assert_eq!(f.exit, 2);
        assert_eq!(
            f.to_string(),
            "apply policy p (INVALID_ARGUMENT):\na: bad\nb.c: bad"
        );
        let codes = [
            (Code::Unauthenticated, 3),
            (Code::PermissionDenied, 3),
            (Code::Unavailable, 5),
            (Code::Unimplemented, 2),
            (Code::FailedPrecondition, 2),
        ];
        for (code, exit) in codes {
            assert_eq!(
                Failure::status("x", &Status::new(code, "m")).exit,
                exit,
                "{code:?}"
            );
        }
        let f = Failure::status("x", &Status::new(Code::Internal, ""));
        assert!(f.to_string().starts_with("x (INTERNAL): "), "{f}");
    }
}
