//! Which configured registry sent a webhook, when its URL has no `?registry=NAME`.
//!
//! A notification names the hosts it comes from: distribution's `target.url` and `request.host`,
//! Harbor's `resource_url` (its external URL without the scheme). [`Senders::recognise`] matches
//! them against the configured registries' URLs:
//!
//! - Hosts compare case-insensitively (a trailing dot ignored), **ports exactly**, and **schemes
//!   not at all** (a TLS-terminating proxy makes a registry see `http` while Ferry uses `https`).
//!   A missing port, `:80` and `:443` are the same "default port" (a `Host` header omits it, and
//!   which default a scheme-less host meant is unknown), so `registry.example`,
//!   `http://registry.example:80/v2/` and `https://registry.example` are one place, while
//!   `127.0.0.1:5000` and `127.0.0.1:5001` are two.
//! - Exactly one registry matching → that one. More than one (the same place configured twice)
//!   → ambiguous. None (or a body that names no host) → the only registry that can be a source
//!   of the current policies, when there is exactly one (events are hints: the worker re-reads
//!   that registry, so a misattributed event copies nothing the source does not hold); otherwise
//!   unknown.
//!
//! An explicit `?registry=` always wins and is checked by the caller ([`Senders::contains`]).
//!
//! Invariants: recognition is pure and never panics on what a body names; an ambiguous or unknown
//! sender is an [`Unrecognised`] that lists the candidates and tells the operator to add
//! `?registry=NAME`; never a guess between two registries.
use std::collections::BTreeSet;

use crate::config::Config;

/// Where a registry is reached, scheme aside: a lower-case host and a port, `None` for the
/// default ports (absent, 80, 443).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    /// The authority of a URL (`https://r.example:5000/v2/...`) or of a scheme-less
    /// `host[:port][/path]` (`r.example/library/app:v1`, `127.0.0.1:5001`); `None` when it has no
    /// usable host.
    pub fn parse(text: &str) -> Option<Authority> {
        let text = text.trim();
        let url = if text.contains("://") {
            url::Url::parse(text).ok()?
        } else {
            // `host[:port]` is everything before the first `/`; `/v2/x` names no host.
            let authority = text.split('/').next().filter(|a| !a.is_empty())?;
            url::Url::parse(&format!("http://{authority}")).ok()?
        };
        let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        // `url` already drops a port that is its scheme's default; the other default goes too.
        let port = url.port().filter(|p| !matches!(p, 80 | 443));
        Some(Authority { host, port })
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The configured registries a webhook may come from, and which of them can be a source.
#[derive(Debug, Clone, Default)]
pub struct Senders {
    /// Every configured registry, with the authority of its URL (`None`: the URL does not parse;
    /// config validation reports that).
    registries: Vec<(String, Option<Authority>)>,
    /// Registries content flows from under the current event-based policies.
    sources: BTreeSet<String>,
}

/// How a sender was recognised, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recognised {
    /// A host the body names matched this registry's URL.
    Host(String),
    /// No host matched; this is the only registry that can be a source.
    OnlySource(String),
}

impl Recognised {
    pub fn registry(&self) -> &str {
        match self {
            Recognised::Host(name) | Recognised::OnlySource(name) => name,
        }
    }

    /// `host` or `only_source`.
    pub fn how(&self) -> &'static str {
        match self {
            Recognised::Host(_) => "host",
            Recognised::OnlySource(_) => "only_source",
        }
    }
}

/// No single registry could be recognised. `Display` is the reason a webhook's 400 answer gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrecognised {
    /// Several registries are reached where the body says it comes from.
    #[error("cannot tell which configured registry sent this notification: it names {}, which several registries' URLs match ({}); add `?registry=NAME` to the notification endpoint URL", list(hosts), candidates.join(", "))]
    Ambiguous {
        hosts: Vec<String>,
        candidates: Vec<String>,
    },
    /// No registry is reached there, and more (or fewer) than one can be a source.
    #[error("cannot tell which configured registry sent this notification: {}, and the candidates are {}; add `?registry=NAME` to the notification endpoint URL", unmatched(hosts), if candidates.is_empty() { "none (no registry is configured)".to_string() } else { candidates.join(", ") })]
    Unknown {
        hosts: Vec<String>,
        candidates: Vec<String>,
    },
}

impl Unrecognised {
    /// The registries the operator can choose from.
    pub fn candidates(&self) -> &[String] {
        match self {
            Unrecognised::Ambiguous { candidates, .. }
            | Unrecognised::Unknown { candidates, .. } => candidates,
        }
    }
}

/// Most hosts an answer lists (a body may name a thousand).
const LISTED_HOSTS: usize = 5;

fn list(hosts: &[String]) -> String {
    let mut text = format!(
        "host(s) {}",
        hosts[..hosts.len().min(LISTED_HOSTS)].join(", ")
    );
    if hosts.len() > LISTED_HOSTS {
        text.push_str(&format!(" and {} more", hosts.len() - LISTED_HOSTS));
    }
    text
}

fn unmatched(hosts: &[String]) -> String {
    if hosts.is_empty() {
        "it names no host".to_string()
    } else {
        format!("it names {}, which no registry's URL matches", list(hosts))
    }
}

impl Senders {
    /// The registries of `config`; `sources` are the names content flows from under the current
    /// policies ([`super::Matcher::sources`]).
    pub fn new<S: Into<String>>(config: &Config, sources: impl IntoIterator<Item = S>) -> Senders {
        Senders {
            registries: config
                .registries
                .iter()
                .map(|r| (r.name.clone(), Authority::parse(&r.url)))
                .collect(),
            sources: sources.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `name` is a configured registry.
    pub fn contains(&self, name: &str) -> bool {
        self.registries.iter().any(|(n, _)| n == name)
    }

    /// Every configured registry name, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.registries.iter().map(|(n, _)| n.as_str())
    }

    /// The registry the `hosts` a body names belong to (see the module docs).
    pub fn recognise<'h>(
        &self,
        hosts: impl IntoIterator<Item = &'h str>,
    ) -> Result<Recognised, Unrecognised> {
        let named: BTreeSet<Authority> = hosts.into_iter().filter_map(Authority::parse).collect();
        let matching: Vec<&str> = self
            .registries
            .iter()
            .filter(|(_, at)| at.as_ref().is_some_and(|at| named.contains(at)))
            .map(|(name, _)| name.as_str())
            .collect();
        let hosts = || named.iter().map(ToString::to_string).collect::<Vec<_>>();
        match matching.as_slice() {
            [one] => Ok(Recognised::Host((*one).to_string())),
            [] => match self.sources.iter().collect::<Vec<_>>().as_slice() {
                [only] => Ok(Recognised::OnlySource((*only).clone())),
                _ => Err(Unrecognised::Unknown {
                    hosts: hosts(),
                    candidates: self.unknown_candidates(),
                }),
            },
            several => Err(Unrecognised::Ambiguous {
                hosts: hosts(),
                candidates: several.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    /// The sources, or every registry when no policy names one.
    fn unknown_candidates(&self) -> Vec<String> {
        if self.sources.is_empty() {
            self.names().map(str::to_string).collect()
        } else {
            self.sources.iter().cloned().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(registries: &[(&str, &str)]) -> Config {
        let doc = json!({
            "registries": registries
                .iter()
                .map(|(name, url)| json!({"name": name, "url": url, "insecure": true}))
                .collect::<Vec<_>>()
        });
        Config::from_slice(&serde_json::to_vec(&doc).unwrap(), "test").expect("config")
    }

    fn at(text: &str) -> Option<String> {
        Authority::parse(text).map(|a| a.to_string())
    }

    #[test]
    fn an_authority_keeps_host_and_port_and_drops_scheme_path_and_default_ports() {
        assert_eq!(
            at("http://127.0.0.1:5001/v2/team/app/manifests/sha256:ab").as_deref(),
            Some("127.0.0.1:5001")
        );
        assert_eq!(at("127.0.0.1:5001").as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(
            at("Registry.EU.example.").as_deref(),
            Some("registry.eu.example")
        );
        assert_eq!(
            at("https://registry.eu.example:443/").as_deref(),
            Some("registry.eu.example")
        );
        assert_eq!(
            at("http://registry.eu.example:443").as_deref(),
            Some("registry.eu.example")
        );
        assert_eq!(
            at("registry.eu.example:80").as_deref(),
            Some("registry.eu.example")
        );
        assert_eq!(
            at("harbor.dev/library/busybox@sha256:dde8e930c7b6a490f728e66292bc9bce42efc9bbb5278bae40e4f30f6e00fe8c").as_deref(),
            Some("harbor.dev")
        );
        assert_eq!(at("[::1]:5000").as_deref(), Some("[::1]:5000"));
    }

    #[test]
    fn text_without_a_usable_host_is_no_authority() {
        for text in ["", "   ", "http://", "/v2/x", "http://:5000/", "a b:5000"] {
            assert_eq!(at(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_host_matches_the_registry_whatever_the_scheme_and_trailing_slash() {
        let senders = Senders::new(
            &config(&[
                ("eu", "https://registry.eu.example/"),
                ("us", "https://registry.us.example"),
            ]),
            ["eu", "us"],
        );
        for host in [
            "registry.eu.example",
            "http://registry.eu.example/v2/a/manifests/v1",
            "REGISTRY.eu.example:443",
        ] {
            assert_eq!(
                senders.recognise([host]),
                Ok(Recognised::Host("eu".into())),
                "{host}"
            );
        }
    }

    #[test]
    fn two_registries_on_one_host_are_told_apart_by_port() {
        let senders = Senders::new(
            &config(&[
                ("a", "http://127.0.0.1:5000"),
                ("b", "http://127.0.0.1:5001"),
            ]),
            ["a", "b"],
        );
        assert_eq!(
            senders.recognise(["127.0.0.1:5001"]),
            Ok(Recognised::Host("b".into()))
        );
        assert_eq!(
            senders.recognise(["http://127.0.0.1:5000/v2/x/manifests/v1", "127.0.0.1:5000"]),
            Ok(Recognised::Host("a".into()))
        );
    }

    #[test]
    fn a_port_is_not_a_default_port() {
        let senders = Senders::new(
            &config(&[
                ("a", "https://r.example:8443"),
                ("b", "https://other.example"),
            ]),
            ["a", "b"],
        );
        assert!(matches!(
            senders.recognise(["r.example"]),
            Err(Unrecognised::Unknown { .. })
        ));
    }

    #[test]
    fn the_same_place_configured_twice_is_ambiguous_and_names_both() {
        let senders = Senders::new(
            &config(&[
                ("a", "https://r.example"),
                ("b", "http://r.example:80/"),
                ("c", "https://c.example"),
            ]),
            ["a"],
        );
        let err = senders.recognise(["r.example"]).unwrap_err();
        assert_eq!(err.candidates(), ["a", "b"]);
        let text = err.to_string();
        assert!(
            text.contains("host(s) r.example") && text.contains("(a, b)"),
            "{text}"
        );
        assert!(
            text.contains("add `?registry=NAME` to the notification endpoint URL"),
            "{text}"
        );
    }

    #[test]
    fn hosts_of_two_registries_in_one_body_are_ambiguous() {
        let senders = Senders::new(
            &config(&[("a", "http://a.example"), ("b", "http://b.example")]),
            ["a"],
        );
        assert!(matches!(
            senders.recognise(["a.example", "b.example"]),
            Err(Unrecognised::Ambiguous { .. })
        ));
    }

    #[test]
    fn an_answer_lists_a_few_hosts_and_counts_the_rest() {
        let senders = Senders::new(&config(&[("a", "https://a.example")]), ["a", "b"]);
        let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}.example")).collect();
        let text = senders
            .recognise(hosts.iter().map(String::as_str))
            .unwrap_err()
            .to_string();
        assert!(text.contains(" and 995 more"), "{text}");
        assert!(text.len() < 400, "{text}");
        let text = senders.recognise([]).unwrap_err().to_string();
        assert!(
            text.contains("it names no host, and the candidates are a, b"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_host_falls_back_to_the_only_source() {
        let senders = Senders::new(
            &config(&[
                ("src", "https://src.example"),
                ("dst", "https://dst.example"),
            ]),
            ["src"],
        );
        assert_eq!(
            senders.recognise(["internal-name:5000"]),
            Ok(Recognised::OnlySource("src".into()))
        );
        assert_eq!(
            senders.recognise([]),
            Ok(Recognised::OnlySource("src".into()))
        );
        // A matching host still wins over the fallback.
        assert_eq!(
            senders.recognise(["dst.example"]),
            Ok(Recognised::Host("dst".into()))
        );
    }

    #[test]
    fn an_unknown_host_with_several_sources_is_refused_naming_the_sources() {
        let senders = Senders::new(
            &config(&[
                ("a", "https://a.example"),
                ("b", "https://b.example"),
                ("d", "https://d.example"),
            ]),
            ["a", "b"],
        );
        let err = senders.recognise(["elsewhere.example:5000"]).unwrap_err();
        assert_eq!(err.candidates(), ["a", "b"]);
        let text = err.to_string();
        assert!(
            text.contains("elsewhere.example:5000") && text.contains("the candidates are a, b"),
            "{text}"
        );
        // Without any source, every registry is a candidate.
        let senders = Senders::new(
            &config(&[("a", "https://a.example"), ("b", "https://b.example")]),
            Vec::<String>::new(),
        );
        assert_eq!(
            senders.recognise(["x.example"]).unwrap_err().candidates(),
            ["a", "b"]
        );
    }
}
