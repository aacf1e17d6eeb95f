//! What every layer's `thiserror` types share: showing an error with its causes on one line.
//!
//! Invariant: each message appears once, even when a wrapper repeats its source's text (many
//! crates' `Display` already includes the cause).

/// `outer: inner: innermost`, skipping a cause whose text an earlier part already contains.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct E {
        message: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(message: &'static str, source: Option<E>) -> E {
        E {
            message,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn causes_follow_the_error_separated_by_colons() {
        let err = e("outer", Some(e("inner", Some(e("root", None)))));
        assert_eq!(error_chain(&err), "outer: inner: root");
    }

    #[test]
    fn a_cause_already_in_its_wrapper_message_is_not_repeated() {
        let err = e("connect failed: refused", Some(e("refused", None)));
        assert_eq!(error_chain(&err), "connect failed: refused");
    }
}
