//! Checks of `registries`: unique non-empty names, base URLs (scheme, no credentials, no path),
//! sizes of at least 1, and well-formed credential references.
//!
//! Invariant: a URL is never echoed in a message (it could carry credentials), and a credential
//! problem names the field, never a value that could be the secret itself.
use super::{FirstUse, NameRules};
use crate::config::schema::{join_index, join_key};
use crate::config::{Credential, Problem, RegistryConfig};

const NAMES: NameRules = NameRules {
    what: "registry",
    empty_hint: "policies refer to registries by this name",
    duplicate_note: "; registry names must be unique",
};

/// Every problem of the `registries` list, in order.
pub(super) fn check(registries: &[RegistryConfig], problems: &mut Vec<Problem>) {
    let mut names = FirstUse::default();
    let mut ids = FirstUse::default();
    let mut locals = FirstUse::default();
    for (i, registry) in registries.iter().enumerate() {
        let path = join_index("registries", i);
        names.check_name(&NAMES, &registry.name, &path, problems);
        check_registry(registry, &path, problems);
        let id = registry.id.map(|id| id.to_string());
        if let Some(first) = id.and_then(|id| ids.record(&id, &path).map(str::to_string)) {
            problems.push(
                Problem::new(join_key(&path, "id"), "duplicate registry id")
                    .hint(format!("already used by {first}; a Harbor policy's `{{\"id\": n}}` must name one registry")),
            );
        }
        if !registry.local {
            continue;
        }
        let region = registry.region.as_deref().unwrap_or_default();
        if let Some(first) = locals.record(region, &path) {
            problems.push(
                Problem::new(join_key(&path, "local"), format!(
                    "a second local registry{}",
                    registry.region.as_ref().map(|r| format!(" in region {r:?}")).unwrap_or_default()
                ))
                .hint(format!("{first} is the local registry already; a region has one (the Harbor whose policies leave out a side)")),
            );
        }
    }
}

fn check_registry(registry: &RegistryConfig, path: &str, problems: &mut Vec<Problem>) {
    check_url(registry, &join_key(path, "url"), problems);
    for (field, value) in [
        ("concurrency", registry.concurrency.map(|c| c as u64)),
        ("chunk_threshold", registry.chunk_threshold),
        ("chunk_size", registry.chunk_size),
        ("poll_interval_seconds", registry.poll_interval_seconds),
    ] {
        if value == Some(0) {
            problems.push(
                Problem::new(
                    join_key(path, field),
                    format!("`{field}` must be at least 1"),
                )
                .hint("remove it to use the default"),
            );
        }
    }
    if registry
        .ca_file
        .as_ref()
        .is_some_and(|f| f.as_os_str().is_empty())
    {
        problems.push(
            Problem::new(join_key(path, "ca_file"), "`ca_file` is empty")
                .hint("give the path of a PEM file, or remove the field"),
        );
    }
    if let Some(credential) = &registry.credential {
        check_credential(credential, &join_key(path, "credential"), problems);
    }
}

fn check_url(registry: &RegistryConfig, path: &str, problems: &mut Vec<Problem>) {
    const EXAMPLE: &str = "e.g. `https://registry.example.com` or `https://10.0.0.5:5000`";
    // The URL itself is never echoed: it could carry credentials.
    let url = match url::Url::parse(&registry.url) {
        Ok(url) => url,
        Err(e) => {
            problems.push(Problem::new(path, format!("invalid URL: {e}")).hint(EXAMPLE));
            return;
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if registry.insecure => {}
        "http" => problems.push(
            Problem::new(path, "plain `http://` needs `\"insecure\": true`").hint(
                "set `\"insecure\": true` on this registry (local or test registries only), or use https://",
            ),
        ),
        other => problems.push(
            Problem::new(path, format!("unsupported scheme `{other}`"))
                .hint(format!("use https:// (or http:// with `insecure: true`); {EXAMPLE}")),
        ),
    }
    if url.host_str().is_none_or(str::is_empty) {
        problems.push(Problem::new(path, "URL has no host").hint(EXAMPLE));
    }
    if !url.username().is_empty() || url.password().is_some() {
        problems.push(
            Problem::new(path, "URL must not contain credentials")
                .hint("use `credential` with `password_env`, `password_file` or an auth file"),
        );
    }
    if !matches!(url.path(), "" | "/") {
        problems.push(
            Problem::new(path, format!("URL must not have a path (`{}`)", url.path()))
                .hint("give only scheme://host[:port]; Ferry adds `/v2/` itself"),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        problems.push(
            Problem::new(path, "URL must not have a query or fragment")
                .hint("give only scheme://host[:port]"),
        );
    }
}

fn check_credential(credential: &Credential, path: &str, problems: &mut Vec<Problem>) {
    match credential {
        Credential::Basic {
            username,
            password_env,
            password_file,
        } => {
            if username.is_empty() {
                problems.push(
                    Problem::new(join_key(path, "username"), "`username` is empty")
                        .hint("for token-only registries use the account or robot name the token belongs to"),
                );
            }
            match (password_env, password_file) {
                (Some(_), Some(_)) => problems.push(
                    Problem::new(
                        path,
                        "both `password_env` and `password_file` are set",
                    )
                    .hint("keep exactly one of them"),
                ),
                (None, None) => problems.push(
                    Problem::new(path, "basic credential without a password source")
                        .hint("add `password_env` (an environment variable name) or `password_file`; secrets are never inline"),
                ),
                _ => {}
            }
            if let Some(var) = password_env {
                if var.is_empty() || var.contains(['=', '\0']) {
                    problems.push(
                        Problem::new(
                            join_key(path, "password_env"),
                            "`password_env` is not a valid environment variable name",
                        )
                        .hint("give the variable's name, e.g. `FERRY_EU_PASSWORD`, not its value"),
                    );
                }
            }
            if password_file
                .as_ref()
                .is_some_and(|f| f.as_os_str().is_empty())
            {
                problems.push(
                    Problem::new(join_key(path, "password_file"), "`password_file` is empty")
                        .hint("give the path of a file that holds the password"),
                );
            }
        }
        Credential::AuthFile { path: file } => {
            if file.as_os_str().is_empty() {
                problems.push(
                    Problem::new(join_key(path, "path"), "auth file path is empty")
                        .hint("e.g. `/run/containers/0/auth.json` or `/root/.docker/config.json`"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::testing::{paths, problems};
    use crate::config::{Config, RegistryConfig};

    #[test]
    fn registry_checks() {
        let json = r#"{"registries": [
            {"name": "a", "url": "http://127.0.0.1:5000"},
            {"name": "a", "url": "ftp://x"},
            {"name": "", "url": "https://u:pa55w0rd@x/v2/?q=1", "concurrency": 1},
            {"name": "d", "url": "not a url"},
            {"name": "e", "url": "http://127.0.0.1:5001", "insecure": true,
             "credential": {"type": "basic", "username": "", "password_env": "A", "password_file": "/f"}},
            {"name": "f", "url": "https://f", "credential": {"type": "basic", "username": "u"}},
            {"name": "g", "url": "https://g", "credential": {"type": "basic", "username": "u", "password_env": "A=B"}},
            {"name": "h", "url": "https://h", "credential": {"type": "auth_file", "path": ""}}
        ]}"#;
        let p = problems(json);
        let got: Vec<(&str, &str)> = p
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        let expected = [
            (
                "registries[0].url",
                "plain `http://` needs `\"insecure\": true`",
            ),
            ("registries[1].name", "duplicate registry name \"a\""),
            ("registries[1].url", "unsupported scheme `ftp`"),
            ("registries[2].name", "registry name is empty"),
            ("registries[2].url", "URL must not contain credentials"),
            ("registries[2].url", "URL must not have a path (`/v2/`)"),
            ("registries[2].url", "URL must not have a query or fragment"),
            (
                "registries[3].url",
                "invalid URL: relative URL without a base",
            ),
            ("registries[4].credential.username", "`username` is empty"),
            (
                "registries[4].credential",
                "both `password_env` and `password_file` are set",
            ),
            (
                "registries[5].credential",
                "basic credential without a password source",
            ),
            (
                "registries[6].credential.password_env",
                "`password_env` is not a valid environment variable name",
            ),
            ("registries[7].credential.path", "auth file path is empty"),
        ];
        assert_eq!(got, expected);
        assert!(
            p.iter().all(|p| p.hint.is_some()),
            "every problem has a hint: {p:#?}"
        );
        assert!(
            !format!("{p:?}").contains("pa55w0rd"),
            "URL credentials are never echoed"
        );
        let http = &p[0];
        assert!(http.hint.as_deref().is_some_and(|h| h.contains("insecure")));
    }

    #[test]
    fn an_unknown_registry_type_is_named_with_its_path_and_the_known_types() {
        let json = r#"{"registries": [
            {"name": "a", "url": "https://a", "type": "harbor"},
            {"name": "b", "url": "https://b", "type": "distribution"},
            {"name": "c", "url": "https://c", "type": "harbour"}
        ]}"#;
        let p = problems(json);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p[0].path, "registries[2].type");
        assert!(p[0].message.contains("harbour"), "{p:#?}");
        let hint = p[0].hint.as_deref().unwrap_or_default();
        assert!(
            hint.contains("distribution") && hint.contains("harbor"),
            "{hint}"
        );
        let config = Config::from_slice(
            br#"{"registries": [{"name": "a", "url": "https://a", "type": "harbor"}, {"name": "b", "url": "https://b"}]}"#,
            "t",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.registries[0].kind,
            crate::config::RegistryKind::Harbor
        );
        assert_eq!(
            config.registries[1].kind,
            crate::config::RegistryKind::Distribution
        );
    }

    #[test]
    fn zero_sizes_are_rejected_structurally() {
        let json = r#"{"registries": [{"name": "a", "url": "https://a", "concurrency": 0, "chunk_size": 0, "chunk_threshold": 0}]}"#;
        assert_eq!(
            paths(json),
            [
                "registries[0].chunk_size",
                "registries[0].chunk_threshold",
                "registries[0].concurrency"
            ]
        );
        // validate() catches them on a config built in code, too.
        let mut config = Config::default();
        config.registries.push(RegistryConfig {
            name: "a".into(),
            id: None,
            local: false,
            kind: Default::default(),
            url: "https://a".into(),
            insecure: false,
            ca_file: None,
            credential: None,
            concurrency: Some(0),
            chunk_threshold: None,
            chunk_size: Some(0),
            poll_interval_seconds: None,
            requests_per_second: None,
            region: None,
        });
        let got: Vec<String> = config.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            got,
            ["registries[0].concurrency", "registries[0].chunk_size"]
        );
    }
}
