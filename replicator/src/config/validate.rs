//! Loading and validation of config and policy files, and resolution of credential references.
//!
//! A document goes through three phases, and each reports **every** problem it finds, with its
//! JSON path and a hint, before the next phase runs:
//! 1. syntax: serde_json, reported with line and column;
//! 2. structure: the document is walked against the schemars schema of the types
//!    ([`super::schema`]): unknown fields, wrong types, missing fields, bad enum values; then serde
//!    deserializes it;
//! 3. semantics ([`Config::validate`]): unique names, registry URLs, credential references,
//!    registry references, destinations, filters, triggers (cron), namespaces.
//!
//! Accepted documents: a config `{"registries": [...], "policies": [...]}`, a bare policy object,
//! or an array of policies. The last two are *policy files*: they load as a [`Config`] with no
//! registries, and their registry references are not checked (there is nothing to check them
//! against); their paths start at the policy (`filters[0].value`, `[1].name`).
//!
//! Invariants: no network I/O and no file I/O besides reading the document (credential files and
//! env vars are only read by [`Credential::resolve`]); no input makes this module panic; no
//! message ever contains a secret (string values are not echoed where a secret could have been
//! pasted, and credential errors name the env var or file, never its content).
use std::fmt;
use std::path::Path;

use serde_json::Value;

use super::schema::{
    did_you_mean, is_policy_field, join_index, join_key, structural_problems, Entry,
};
use super::{Config, Credential, RegistryConfig};
use crate::policy::{FilterKind, Mode, Policy, Selector, TriggerKind};

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

/// A config file that could not be used, with every problem found. Displays one line per problem:
/// `<source>: <path>: <message> (hint: ...)`.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.source_name, .problems))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

fn render(source_name: &str, problems: &[Problem]) -> String {
    if problems.is_empty() {
        return format!("{source_name}: invalid");
    }
    problems
        .iter()
        .map(|p| format!("{source_name}: {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The kind of document that was loaded; decides the paths of policy problems and whether
/// registry references are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Config,
    Policy,
    Policies,
}

impl Shape {
    /// Detects the shape from the top-level JSON value.
    fn of(value: &Value) -> Result<Shape, Problem> {
        match value {
            Value::Array(_) => Ok(Shape::Policies),
            Value::Object(map)
                if map.contains_key("registries") || map.contains_key("policies") =>
            {
                Ok(Shape::Config)
            }
            Value::Object(map) if map.keys().any(|k| is_policy_field(k)) => Ok(Shape::Policy),
            Value::Object(_) => Ok(Shape::Config),
            _ => Err(Problem::new(
                "",
                "expected a config object, a policy object or an array of policies",
            )
            .hint(r#"a config looks like {"registries": [...], "policies": [...]}"#)),
        }
    }

    fn entry(self) -> Entry {
        match self {
            Shape::Config => Entry::Config,
            Shape::Policy => Entry::Policy,
            Shape::Policies => Entry::Policies,
        }
    }

    /// Path of the `i`th policy.
    fn policy_path(self, i: usize) -> String {
        match self {
            Shape::Config => join_index("policies", i),
            Shape::Policy => String::new(),
            Shape::Policies => join_index("", i),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config or policy file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            source_name: source_name.clone(),
            problems: vec![Problem::new("", format!("cannot read the file: {e}"))
                .hint("check the path and its permissions")],
        })?;
        Self::from_slice(&bytes, &source_name)
    }

    /// Parses and validates a config document, a bare policy or an array of policies.
    /// `source_name` (usually the file name) prefixes every line of the error.
    pub fn from_slice(bytes: &[u8], source_name: &str) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<Problem>| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| fail(vec![syntax_problem(&e)]))?;
        let shape = Shape::of(&value).map_err(|p| fail(vec![p]))?;
        let problems = structural_problems(&value, shape.entry());
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let config = deserialize(value, shape).map_err(|p| fail(vec![p]))?;
        let problems = config.check(shape, shape == Shape::Config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Semantic checks only (the value is already well-typed): every problem, with JSON paths as in
    /// a config file (`policies[0]...`). Registry references are checked when the config has
    /// registries; a config without registries is a set of standalone policies.
    pub fn validate(&self) -> Vec<Problem> {
        self.check(Shape::Config, !self.registries.is_empty())
    }

    /// The registry called `name`.
    pub fn registry(&self, name: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.name == name)
    }

    /// The policy called `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    fn check(&self, shape: Shape, check_registry_refs: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut seen: Vec<(&str, String)> = Vec::new();
        for (i, registry) in self.registries.iter().enumerate() {
            let path = join_index("registries", i);
            if registry.name.trim().is_empty() {
                problems.push(
                    Problem::new(join_key(&path, "name"), "registry name is empty")
                        .hint("policies refer to registries by this name"),
                );
            } else if let Some((_, first)) = seen.iter().find(|(n, _)| *n == registry.name) {
                problems.push(
                    Problem::new(
                        join_key(&path, "name"),
                        format!("duplicate registry name {:?}", registry.name),
                    )
                    .hint(format!(
                        "already used by {first}; registry names must be unique"
                    )),
                );
            } else {
                seen.push((&registry.name, path.clone()));
            }
            check_registry(registry, &path, &mut problems);
        }

        let declared: Vec<String> = self.registries.iter().map(|r| r.name.clone()).collect();
        let refs = check_registry_refs.then_some(declared.as_slice());
        let mut seen: Vec<(&str, String)> = Vec::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let path = shape.policy_path(i);
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == policy.name) {
                problems.push(
                    Problem::new(
                        join_key(&path, "name"),
                        format!("duplicate policy name {:?}", policy.name),
                    )
                    .hint(format!(
                        "already used by {}; policy names must be unique",
                        if first.is_empty() { "$" } else { first }
                    )),
                );
            } else {
                seen.push((&policy.name, path.clone()));
            }
            check_policy(policy, &path, refs, &mut problems);
        }
        self.check_regions(shape, &mut problems);
        problems
    }

    /// `regions` names are unique and reachable; every region a registry or policy names is
    /// declared; a pull or bidirectional policy writes to one region (or says where it runs).
    fn check_regions(&self, shape: Shape, problems: &mut Vec<Problem>) {
        let mut seen: Vec<(&str, String)> = Vec::new();
        for (i, region) in self.regions.iter().enumerate() {
            let path = join_index("regions", i);
            if region.name.trim().is_empty() {
                problems.push(
                    Problem::new(join_key(&path, "name"), "region name is empty")
                        .hint("use the name given to `--region` in that region"),
                );
            } else if let Some((_, first)) = seen.iter().find(|(n, _)| *n == region.name) {
                problems.push(
                    Problem::new(
                        join_key(&path, "name"),
                        format!("duplicate region name {:?}", region.name),
                    )
                    .hint(format!("already used by {first}")),
                );
            } else {
                seen.push((&region.name, path.clone()));
            }
            match url::Url::parse(&region.forward_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => problems.push(
                    Problem::new(
                        join_key(&path, "forward_url"),
                        format!("{:?} is not an http(s) URL", region.forward_url),
                    )
                    .hint("the region agent's --forward-listen address, e.g. https://ferry-agent.eu.example:9444"),
                ),
            }
        }
        let declared: Vec<String> = self.regions.iter().map(|r| r.name.clone()).collect();
        // A policy file has no `regions` to check its `region` against.
        let bare = !matches!(shape, Shape::Config);
        let check = |name: &str, path: String, problems: &mut Vec<Problem>| {
            if bare || declared.iter().any(|d| d == name) {
                return;
            }
            let hint = if declared.is_empty() {
                "declare the regions in `regions` (name and forward_url of each)".to_string()
            } else {
                format!("declared regions: {}", declared.join(", "))
            };
            problems.push(Problem::new(path, format!("unknown region {name:?}")).hint(hint));
        };
        for (i, registry) in self.registries.iter().enumerate() {
            if let Some(region) = &registry.region {
                check(
                    region,
                    join_key(&join_index("registries", i), "region"),
                    problems,
                );
            }
        }
        for (i, policy) in self.policies.iter().enumerate() {
            let path = shape.policy_path(i);
            if let Some(region) = &policy.region {
                check(region, join_key(&path, "region"), problems);
                continue;
            }
            if policy.mode == Mode::Push {
                continue;
            }
            let mut regions: Vec<&str> = policy
                .destinations()
                .filter_map(|d| self.registry(&d.name)?.region.as_deref())
                .collect();
            regions.sort_unstable();
            regions.dedup();
            if regions.len() > 1 {
                problems.push(
                    Problem::new(
                        join_key(&path, "dest_registries"),
                        format!(
                            "a {} policy runs in its destination's region, and these destinations are in regions {}",
                            if policy.mode == Mode::Pull { "pull" } else { "bidirectional" },
                            regions.join(", ")
                        ),
                    )
                    .hint("set the policy's `region`, or write one policy per destination region"),
                );
            }
        }
    }
}

/// A JSON syntax error, with line and column.
fn syntax_problem(error: &serde_json::Error) -> Problem {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    let hint = match error.classify() {
        serde_json::error::Category::Eof => {
            "the document ends too early: is a closing `}`, `]` or `\"` missing?"
        }
        _ => "look for a missing or trailing comma, an unquoted key or a missing quote near that position",
    };
    Problem::new(
        "",
        format!(
            "invalid JSON at line {}, column {}: {message}",
            error.line(),
            error.column()
        ),
    )
    .hint(hint)
}

/// serde deserialization of a structurally valid document.
fn deserialize(value: Value, shape: Shape) -> Result<Config, Problem> {
    let result = match shape {
        Shape::Config => serde_json::from_value::<Config>(value),
        Shape::Policy => serde_json::from_value::<Policy>(value).map(|p| Config {
            policies: vec![p],
            ..Config::default()
        }),
        Shape::Policies => serde_json::from_value::<Vec<Policy>>(value).map(|policies| Config {
            policies,
            ..Config::default()
        }),
    };
    // Not expected after the structural walk; kept as a safety net without a precise path.
    result.map_err(|e| Problem::new("", e.to_string()))
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

/// `declared`: the config's registry names, or `None` when references are not checked.
fn check_policy(
    policy: &Policy,
    path: &str,
    declared: Option<&[String]>,
    problems: &mut Vec<Problem>,
) {
    let at = |field: &str| join_key(path, field);

    if policy.name.is_empty() {
        problems.push(Problem::new(at("name"), "policy name is empty").hint(
            "names appear in metrics, logs and `--policy`; use letters, digits, `.`, `_`, `-`",
        ));
    } else if !policy
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        problems.push(
            Problem::new(at("name"), format!("invalid policy name {:?}", policy.name))
                .hint("use only letters, digits, `.`, `_` and `-`"),
        );
    }

    // Registries.
    let check_ref = |name: &str, ref_path: String, problems: &mut Vec<Problem>| {
        if name.is_empty() {
            problems.push(
                Problem::new(ref_path, "registry name is empty")
                    .hint("name a registry declared in `registries`"),
            );
            return;
        }
        let Some(declared) = declared else {
            return;
        };
        if !declared.iter().any(|d| d == name) {
            let mut hint = if declared.is_empty() {
                "no registries are declared; add one to `registries` (or validate a bare policy, or an array of policies, on its own)".to_string()
            } else {
                format!("declared registries: {}", declared.join(", "))
            };
            if let Some(suggestion) = did_you_mean(name, declared) {
                hint = format!("did you mean `{suggestion}`? {hint}");
            }
            problems.push(Problem::new(ref_path, format!("unknown registry {name:?}")).hint(hint));
        }
    };
    check_ref(
        &policy.src_registry.name,
        join_key(&at("src_registry"), "name"),
        problems,
    );

    let mut destinations: Vec<(&str, String)> = Vec::new();
    if let Some(dest) = &policy.dest_registry {
        destinations.push((&dest.name, join_key(&at("dest_registry"), "name")));
    }
    for (k, dest) in policy.dest_registries.iter().enumerate() {
        destinations.push((
            &dest.name,
            join_key(&join_index(&at("dest_registries"), k), "name"),
        ));
    }
    match (&policy.dest_registry, policy.dest_registries.is_empty()) {
        (Some(_), false) => problems.push(
            Problem::new(at("dest_registries"), "both `dest_registry` and `dest_registries` are set")
                .hint("use `dest_registry` for one destination or `dest_registries` for several, not both"),
        ),
        (None, true) => problems.push(
            Problem::new(at("dest_registry"), "the policy has no destination")
                .hint(r#"add "dest_registry": {"name": "..."} (or `dest_registries` for several)"#),
        ),
        _ => {}
    }
    if policy.mode == Mode::Bidirectional && !policy.dest_namespace.is_empty() {
        problems.push(
            Problem::new(
                at("dest_namespace"),
                "a bidirectional policy cannot rewrite namespaces",
            )
            .hint("both registries are sources, so repositories must keep the same path on both sides; remove `dest_namespace`"),
        );
    }
    if policy.mode == Mode::Bidirectional && destinations.len() > 1 {
        problems.push(
            Problem::new(
                at("dest_registries"),
                "a bidirectional policy links exactly two registries",
            )
            .hint("use one `dest_registry`, and one bidirectional policy per pair of registries"),
        );
    }
    for (k, (name, dest_path)) in destinations.iter().enumerate() {
        check_ref(name, dest_path.clone(), problems);
        if !name.is_empty() && *name == policy.src_registry.name {
            problems.push(
                Problem::new(
                    dest_path.clone(),
                    format!("destination {name:?} is also the source"),
                )
                .hint("replicating a registry onto itself does nothing; pick another destination"),
            );
        }
        if let Some((_, first)) = destinations[..k].iter().find(|(n, _)| n == name) {
            problems.push(
                Problem::new(
                    dest_path.clone(),
                    format!("destination {name:?} is listed twice"),
                )
                .hint(format!("already at {first}")),
            );
        }
    }

    // Namespace.
    if let Some(message) = policy.dest_namespace_error() {
        problems.push(
            Problem::new(at("dest_namespace"), format!("invalid namespace: {message}")).hint(
                "lowercase path components separated by `/`, e.g. `mirror` or `team/mirror` (at most 255 characters); empty keeps source paths",
            ),
        );
    }
    if policy.dest_namespace_replace_count < -1 {
        problems.push(
            Problem::new(
                at("dest_namespace_replace_count"),
                format!(
                    "{} is out of range: must be at least -1",
                    policy.dest_namespace_replace_count
                ),
            )
            .hint("-1 flattens all, 0 prefixes, n strips n leading path components"),
        );
    }

    // Trigger.
    let cron = policy
        .trigger
        .trigger_settings
        .as_ref()
        .map(|s| s.cron.trim())
        .unwrap_or_default();
    let cron_path = join_key(&join_key(&at("trigger"), "trigger_settings"), "cron");
    match policy.trigger.kind {
        TriggerKind::Scheduled if cron.is_empty() => problems.push(
            Problem::new(cron_path, "a scheduled trigger needs a cron expression").hint(
                r#"e.g. "trigger_settings": {"cron": "0 0 */6 * * *"} (seconds minutes hours day-of-month month day-of-week)"#,
            ),
        ),
        TriggerKind::Scheduled => {
            if let Err(message) = check_cron(cron) {
                problems.push(Problem::new(cron_path, format!("invalid cron expression: {message}")).hint(
                    "5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first; each `*`, `n`, `a-b`, lists `a,b`, steps `*/n`; names like MON or JAN",
                ));
            }
        }
        TriggerKind::Manual | TriggerKind::EventBased if !cron.is_empty() => problems.push(
            Problem::new(cron_path, "only a `scheduled` trigger takes a cron expression")
                .hint(r#"set "trigger": {"type": "scheduled", ...} or remove the cron"#),
        ),
        TriggerKind::Manual | TriggerKind::EventBased => {}
    }

    // Filters.
    let filters_path = at("filters");
    for (j, filter) in policy.filters.iter().enumerate() {
        if let Err(message) = Selector::check_filter(filter) {
            let hint = match filter.kind {
                FilterKind::Name | FilterKind::Tag => {
                    "doublestar glob: `*` and `?` within a path component, `**` across, `{a,b}`, `[a-z]`"
                }
                FilterKind::Resource => "use `image` or `artifact`",
                FilterKind::Platform => "use `os/arch` or `os/arch/variant`, e.g. `linux/amd64`, `linux/arm64/v8`",
                FilterKind::Label => "use `key` or `key=value`",
                FilterKind::ArtifactType => {
                    "a glob over media types, e.g. `application/vnd.dev.cosign*` or `application/spdx+json`"
                }
            };
            problems.push(
                Problem::new(join_key(&join_index(&filters_path, j), "value"), message).hint(hint),
            );
        }
    }
}

/// One cron field: name, range, and the names it accepts (value = first + index).
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    question_mark: bool,
}

const SECOND: CronField = CronField {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    question_mark: false,
};
const MINUTE: CronField = CronField {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    question_mark: false,
};
const HOUR: CronField = CronField {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    question_mark: false,
};
const DAY_OF_MONTH: CronField = CronField {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    question_mark: true,
};
const MONTH: CronField = CronField {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    question_mark: false,
};
const DAY_OF_WEEK: CronField = CronField {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    question_mark: true,
};

/// Basic syntax check of a 5-field or 6-field (seconds first, Harbor's form) cron expression.
pub(crate) fn check_cron(expression: &str) -> Result<(), String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let layout: &[CronField] = match fields.len() {
        5 => &[MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        6 => &[SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        n => return Err(format!("{n} fields; expected 5, or 6 with seconds first")),
    };
    for (text, field) in fields.iter().zip(layout) {
        check_cron_field(text, field).map_err(|m| format!("{} field {text:?}: {m}", field.name))?;
    }
    Ok(())
}

fn check_cron_field(text: &str, field: &CronField) -> Result<(), String> {
    let value = |s: &str| -> Result<u32, String> {
        let n = match s.parse::<u32>() {
            Ok(n) => n,
            Err(_) => field
                .names
                .iter()
                .position(|name| name.eq_ignore_ascii_case(s))
                .and_then(|i| u32::try_from(i).ok())
                .map(|i| i + field.min)
                .ok_or_else(|| format!("{s:?} is not a number or a known name"))?,
        };
        if n < field.min || n > field.max {
            return Err(format!("{n} is outside {}-{}", field.min, field.max));
        }
        Ok(n)
    };
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(s) if s >= 1 => {}
                _ => return Err(format!("step {step:?} is not a positive number")),
            }
        }
        match range {
            "" => return Err("empty list item".to_string()),
            "*" => {}
            "?" if field.question_mark && step.is_none() => {}
            _ => match range.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (value(low)?, value(high)?);
                    if low > high {
                        return Err(format!("range {range:?} is backwards"));
                    }
                }
                None => {
                    value(range)?;
                }
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(json: &str) -> Vec<Problem> {
        match Config::from_slice(json.as_bytes(), "test.json") {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    fn paths(json: &str) -> Vec<String> {
        problems(json).into_iter().map(|p| p.path).collect()
    }

    const REGISTRIES: &str = r#"[
        {"name": "eu", "url": "https://registry.eu.example"},
        {"name": "us", "url": "https://registry.us.example:5000/"},
        {"name": "ap", "url": "https://registry.ap.example"}]"#;

    fn config_with_policy(policy: &str) -> String {
        format!(r#"{{"registries": {REGISTRIES}, "policies": [{policy}]}}"#)
    }

    #[test]
    fn valid_config_loads() {
        let json = config_with_policy(
            r#"{"name": "eu-to-us", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"},
                "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 */5 * * * MON-FRI"}},
                "filters": [{"type": "name", "value": "platform/**"},
                            {"type": "platform", "value": "linux/arm64/v8"}],
                "dest_namespace": "mirror/eu", "dest_namespace_replace_count": 1, "deletion": true}"#,
        );
        let config = Config::from_slice(json.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(config.validate().is_empty());
        assert!(config
            .policy("eu-to-us")
            .is_some_and(|p| p.replicate_deletion));
        assert_eq!(
            config.registry("us").map(|r| r.url.as_str()),
            Some("https://registry.us.example:5000/")
        );
        assert!(config.registry("nope").is_none());
    }

    #[test]
    fn bare_policy_and_policy_arrays_skip_registry_checks() {
        let policy = r#"{"name": "p", "src_registry": {"name": "anywhere"}, "dest_registry": {"name": "else"},
                         "filters": [{"type": "tag", "value": "v*", "bogus": 1}]}"#;
        assert_eq!(paths(policy), ["filters[0].bogus"]);
        let fixed = policy.replace(r#", "bogus": 1"#, "");
        let config = Config::from_slice(fixed.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.policies.len(), 1);
        assert!(config.registries.is_empty());
        assert!(
            config.validate().is_empty(),
            "standalone policies are not checked against registries"
        );

        let array = format!("[{fixed}, {fixed}]");
        let problems = problems(&array);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "[1].name");
        assert!(problems[0].message.contains("duplicate policy name"));
    }

    #[test]
    fn config_shape_checks_registry_references_even_without_registries() {
        let json = r#"{"policies": [{"name": "p", "src_registry": {"name": "eu"}, "dest_registry": {"name": "us"}}]}"#;
        assert_eq!(
            paths(json),
            [
                "policies[0].src_registry.name",
                "policies[0].dest_registry.name"
            ]
        );
    }

    #[test]
    fn unknown_registry_has_suggestion_and_list() {
        let json = config_with_policy(
            r#"{"name": "p", "src_registry": {"name": "eu1"}, "dest_registry": {"name": "us"}}"#,
        );
        let p = problems(&json);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "policies[0].src_registry.name");
        assert_eq!(p[0].message, r#"unknown registry "eu1""#);
        assert_eq!(
            p[0].hint.as_deref(),
            Some("did you mean `eu`? declared registries: eu, us, ap")
        );
    }

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

    #[test]
    fn policy_checks() {
        let json = format!(
            r#"{{"registries": {REGISTRIES}, "policies": [
            {{"name": "bad name!", "src_registry": {{"name": "eu"}}}},
            {{"name": "two", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
              "dest_registries": [{{"name": "ap"}}]}},
            {{"name": "self", "src_registry": {{"name": "eu"}}, "dest_registries": [{{"name": "eu"}}, {{"name": "us"}}, {{"name": "us"}}]}},
            {{"name": "ns", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
              "dest_namespace": "Team/Mirror", "mode": "bidirectional"}},
            {{"name": "ns", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": ""}}, "mode": "bidirectional",
              "dest_registries": [{{"name": "ap"}}]}},
            {{"name": "", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
              "filters": [{{"type": "name", "value": "[abc"}}, {{"type": "tag", "value": "v*"}},
                          {{"type": "resource", "value": "chart"}}, {{"type": "platform", "value": "linux"}},
                          {{"type": "label", "value": "=v"}}]}}
            ]}}"#
        );
        let p = problems(&json);
        let got: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            got,
            [
                "policies[0].name",
                "policies[0].dest_registry",
                "policies[1].dest_registries",
                "policies[2].dest_registries[0].name",
                "policies[2].dest_registries[2].name",
                "policies[3].dest_namespace",
                "policies[3].dest_namespace",
                "policies[4].name",
                "policies[4].dest_registries",
                "policies[4].dest_registries",
                "policies[4].dest_registry.name",
                "policies[5].name",
                "policies[5].filters[0].value",
                "policies[5].filters[2].value",
                "policies[5].filters[3].value",
                "policies[5].filters[4].value",
            ],
            "{p:#?}"
        );
        assert!(p.iter().all(|p| p.hint.is_some()), "{p:#?}");
    }

    #[test]
    fn regions() {
        let json = r#"{
          "regions": [{"name": "eu", "forward_url": "https://agent.eu:9444"},
                      {"name": "eu", "forward_url": "agent.us:9444"},
                      {"name": "us", "forward_url": "http://agent.us:9444"}],
          "registries": [
            {"name": "a", "url": "https://a.example", "region": "eu"},
            {"name": "b", "url": "https://b.example", "region": "us"},
            {"name": "c", "url": "https://c.example", "region": "ap"},
            {"name": "hub", "url": "https://hub.example"}],
          "policies": [
            {"name": "push", "src_registry": {"name": "a"}, "dest_registries": [{"name": "b"}, {"name": "hub"}]},
            {"name": "pull-two-regions", "mode": "pull", "src_registry": {"name": "hub"},
             "dest_registries": [{"name": "a"}, {"name": "b"}]},
            {"name": "relay", "mode": "pull", "region": "us", "src_registry": {"name": "hub"},
             "dest_registries": [{"name": "a"}, {"name": "b"}]},
            {"name": "nowhere", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}, "region": "mars"}
          ]}"#;
        let p = problems(json);
        let got: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            got,
            [
                "regions[1].name",
                "regions[1].forward_url",
                "registries[2].region",
                "policies[1].dest_registries",
                "policies[3].region",
            ],
            "{p:#?}"
        );
        assert!(p.iter().all(|p| p.hint.is_some()), "{p:#?}");
        assert!(
            p[4].hint.as_deref().unwrap().contains("eu, eu, us"),
            "{p:#?}"
        );
        // A policy file names a region it cannot check.
        assert!(problems(
            r#"{"name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}, "region": "eu"}"#
        )
        .is_empty());
    }

    #[test]
    fn triggers_and_cron() {
        let policy = |trigger: &str| {
            config_with_policy(&format!(
                r#"{{"name": "p", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}}, "trigger": {trigger}}}"#
            ))
        };
        let cron_path = "policies[0].trigger.trigger_settings.cron";
        assert_eq!(paths(&policy(r#"{"type": "scheduled"}"#)), [cron_path]);
        assert_eq!(
            paths(&policy(
                r#"{"type": "scheduled", "trigger_settings": {"cron": ""}}"#
            )),
            [cron_path]
        );
        assert_eq!(
            paths(&policy(
                r#"{"type": "scheduled", "trigger_settings": {"cron": "* * *"}}"#
            )),
            [cron_path]
        );
        assert!(paths(&policy(
            r#"{"type": "scheduled", "trigger_settings": {"cron": "0 0 * * *"}}"#
        ))
        .is_empty());
        assert_eq!(
            paths(&policy(
                r#"{"type": "event_based", "trigger_settings": {"cron": "0 0 * * *"}}"#
            )),
            [cron_path]
        );
        assert!(paths(&policy(
            r#"{"type": "manual", "trigger_settings": {"cron": ""}}"#
        ))
        .is_empty());
        assert!(paths(&policy(r#"{"type": "event_based"}"#)).is_empty());
    }

    #[test]
    fn cron_syntax() {
        for ok in [
            "* * * * *",
            "0 0 */6 * * *",
            "0 30 2 * * ?",
            "15,45 8-18/2 1-15 JAN-jun mon-FRI",
            "0 0 0 1 1 0",
            "59 23 31 12 7",
            "5/15 * * * *",
        ] {
            assert!(check_cron(ok).is_ok(), "{ok}: {:?}", check_cron(ok));
        }
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "1,,2 * * * *",
            "? * * * *",
            "* * * FOO *",
            "@daily",
            "a b c d e",
        ] {
            assert!(check_cron(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let p = problems("{\n  \"registries\": [,]\n}");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "");
        assert!(
            p[0].message
                .starts_with("invalid JSON at line 2, column 18"),
            "{}",
            p[0].message
        );
        let eof = problems("{\"policies\": [");
        assert!(eof[0]
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("ends too early")));
        assert_eq!(problems("")[0].path, "");
        assert_eq!(
            problems("\u{feff}{}").len(),
            1,
            "a BOM is a syntax error, not a panic"
        );
        assert_eq!(paths("42"), [""]);
        assert!(problems("{}").is_empty());
    }

    #[test]
    fn display_lists_every_problem_on_its_own_line() {
        let err = Config::from_slice(
            br#"{"registries": [{"name": "a"}], "bogus": 1}"#,
            "cfg.json",
        )
        .unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "cfg.json: bogus: unknown field `bogus` (hint: allowed fields: policies, regions, registries)",
                "cfg.json: registries[0].url: missing required field `url` (hint: Base URL, `https://host[:port]` (or `http://` with `insecure: true`).)",
            ]
        );
        let syntax = Config::from_slice(b"{", "x.json").unwrap_err().to_string();
        assert!(
            syntax.starts_with("x.json: $: invalid JSON at line 1, column 1"),
            "{syntax}"
        );
    }

    #[test]
    fn deletion_alias() {
        let base = r#"{"name": "p", "src_registry": {"name": "a"}, "dest_registry": {"name": "b"}"#;
        let config = Config::from_slice(format!(r#"{base}, "deletion": true}}"#).as_bytes(), "t")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.policies[0].replicate_deletion);
        let both = problems(&format!(
            r#"{base}, "deletion": true, "replicate_deletion": true}}"#
        ));
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].path, "deletion");
    }

    #[test]
    fn load_reports_unreadable_files() {
        let err = Config::load(Path::new("/nonexistent/ferry.json")).unwrap_err();
        assert_eq!(err.source_name, "/nonexistent/ferry.json");
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].message.starts_with("cannot read the file"));
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let deep = "[".repeat(10_000);
        let _ = Config::from_slice(deep.as_bytes(), "deep");
        let many_types = r#"{"registries": {"a": 1}, "policies": "x"}"#;
        assert_eq!(paths(many_types), ["policies", "registries"]);
        let _ = Config::from_slice(br#"[1, "a", null, {"name": 5}]"#, "x");
        let _ = Config::from_slice(br#"{"policies": [{"name": "p", "src_registry": {"name": "a"}, "dest_namespace_replace_count": 99999999999999999999}]}"#, "x");
        let _ = Config::from_slice(&[0xff, 0xfe, 0x00], "binary");
    }
}
