//! Checks of `policies`: unique valid names, registry references (resolved, when the document has
//! registries to resolve them against, by [`crate::config::references`]), destinations, the namespace rewrite, the trigger and its
//! cron, and filters.
//!
//! Invariant: each policy is checked on its own, in document order, and every problem is kept; a
//! policy file's paths start at the policy (see [`Shape::policy_path`]).
use super::FirstUse;
use crate::config::references::Known;
use crate::config::schema::{join_index, join_key};
use crate::config::shape::Shape;
use crate::config::Problem;
use crate::policy::{cron, FilterKind, Mode, Policy, Selector, TriggerKind};
use crate::replicate::gates::cosign::CosignKey;
use crate::replicate::gates::scan::Severity;

/// Every problem of the `policies` list, and the policies with their registry references resolved
/// against `known` (as written where they could not be).
pub(super) fn check(
    policies: &[Policy],
    shape: Shape,
    known: &Known,
    problems: &mut Vec<Problem>,
) -> Vec<Policy> {
    let mut names = FirstUse::default();
    let mut resolved = Vec::with_capacity(policies.len());
    for (i, policy) in policies.iter().enumerate() {
        let path = shape.policy_path(i);
        if let Some(first) = names.record(&policy.name, &path) {
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
        }
        check_name(policy, &path, problems);
        let mut policy = known.resolve(policy, &path, problems);
        policy.fold_deletion_alias();
        check_destinations(&policy, &path, problems);
        check_namespace(&policy, &path, problems);
        check_trigger(&policy, &path, problems);
        check_filters(&policy, &path, problems);
        check_gates(&policy, &path, problems);
        resolved.push(policy);
    }
    resolved
}

fn check_name(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    let at = join_key(path, "name");
    if policy.name.is_empty() {
        problems.push(Problem::new(at, "policy name is empty").hint(
            "names appear in metrics, logs and `--policy`; use letters, digits, `.`, `_`, `-`",
        ));
    } else if !policy
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        problems.push(
            Problem::new(at, format!("invalid policy name {:?}", policy.name))
                .hint("use only letters, digits, `.`, `_` and `-`"),
        );
    }
}

/// The destinations of a resolved policy: one way of listing them, none the source, none twice,
/// and what a bidirectional policy allows. (Whether the references name declared registries is
/// [`Known::resolve`]'s.)
fn check_destinations(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    let at = |field: &str| join_key(path, field);

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
    // A policy without a destination pulls into the local registry (Known::resolve).
    if policy.dest_registry.is_some() && !policy.dest_registries.is_empty() {
        problems.push(
            Problem::new(at("dest_registries"), "both `dest_registry` and `dest_registries` are set")
                .hint("use `dest_registry` for one destination or `dest_registries` for several, not both"),
        );
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
}

fn check_namespace(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    if let Some(message) = policy.dest_namespace_error() {
        problems.push(
            Problem::new(join_key(path, "dest_namespace"), format!("invalid namespace: {message}")).hint(
                "lowercase path components separated by `/`, e.g. `mirror` or `team/mirror` (at most 255 characters); empty keeps source paths",
            ),
        );
    }
    if policy.dest_namespace_replace_count < -1 {
        problems.push(
            Problem::new(
                join_key(path, "dest_namespace_replace_count"),
                format!(
                    "{} is out of range: must be at least -1",
                    policy.dest_namespace_replace_count
                ),
            )
            .hint("-1 flattens all, 0 prefixes, n strips n leading path components"),
        );
    }
}

/// A `scheduled` trigger has a valid cron; no other trigger has one.
fn check_trigger(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    let expression = policy
        .trigger
        .trigger_settings
        .as_ref()
        .map(|s| s.cron.trim())
        .unwrap_or_default();
    let cron_path = join_key(
        &join_key(&join_key(path, "trigger"), "trigger_settings"),
        "cron",
    );
    match policy.trigger.kind {
        TriggerKind::Scheduled if expression.is_empty() => problems.push(
            Problem::new(cron_path, "a scheduled trigger needs a cron expression").hint(
                r#"e.g. "trigger_settings": {"cron": "0 0 */6 * * *"} (seconds minutes hours day-of-month month day-of-week)"#,
            ),
        ),
        TriggerKind::Scheduled => {
            if let Err(message) = cron::parse(expression) {
                problems.push(Problem::new(cron_path, format!("invalid cron expression: {message}")).hint(
                    "5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first; each `*`, `n`, `a-b`, lists `a,b`, steps `*/n`; names like MON or JAN",
                ));
            }
        }
        TriggerKind::Manual | TriggerKind::EventBased if !expression.is_empty() => problems.push(
            Problem::new(cron_path, "only a `scheduled` trigger takes a cron expression")
                .hint(r#"set "trigger": {"type": "scheduled", ...} or remove the cron"#),
        ),
        TriggerKind::Manual | TriggerKind::EventBased => {}
    }
}

fn check_filters(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    let filters_path = join_key(path, "filters");
    for (j, filter) in policy.filters.iter().enumerate() {
        let Err(message) = Selector::check_filter(filter) else {
            continue;
        };
        let hint = match filter.kind {
            FilterKind::Name | FilterKind::Tag => {
                "doublestar glob: `*` and `?` within a path component, `**` across, `{a,b}`, `[a-z]`"
            }
            FilterKind::Resource => "use `image` or `artifact`",
            FilterKind::Platform => {
                "use `os/arch` or `os/arch/variant`, e.g. `linux/amd64`, `linux/arm64/v8`"
            }
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

/// `only_signed` with its key file (read and parsed here, so a missing or unusable key is a config
/// error naming the file), `max_severity` and the flags that only make sense beside them.
fn check_gates(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    match (&policy.signature_public_key_file, policy.only_signed) {
        (Some(_), false) => problems.push(
            Problem::new(
                join_key(path, "signature_public_key_file"),
                "a signature public key without `only_signed: true` checks nothing",
            )
            .hint("add `\"only_signed\": true`, or remove the key file"),
        ),
        (Some(file), true) => {
            if let Err(e) = CosignKey::load(file) {
                problems.push(
                    Problem::new(join_key(path, "signature_public_key_file"), e.to_string()).hint(
                        "a PEM `PUBLIC KEY` block holding an ECDSA P-256 key, as `cosign generate-key-pair` writes to cosign.pub",
                    ),
                );
            }
        }
        (None, _) => {}
    }
    if let Some(level) = &policy.max_severity {
        if let Err(message) = level.parse::<Severity>() {
            problems.push(Problem::new(join_key(path, "max_severity"), message));
        }
    }
    if policy.allow_unscanned && policy.max_severity.is_none() {
        problems.push(
            Problem::new(
                join_key(path, "allow_unscanned"),
                "`allow_unscanned` only applies with `max_severity`",
            )
            .hint("set `max_severity`, or remove `allow_unscanned`"),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::testing::{config_with_policy, paths, problems, REGISTRIES};

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
                "policies[4].dest_registry.name",
                "policies[4].dest_registries",
                "policies[4].dest_registries",
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
    fn validation_refuses_exactly_the_crons_the_scheduler_cannot_parse() {
        for expression in [
            "0 0 */6 * * *",
            "*/5 * * * *",
            "5/15 * * * *",
            "0 0 L * *",
            "1,,2 * * * *",
            "* * * * * * *",
            "@daily",
            "0 0 30 2 *",
            "61 * * * *",
        ] {
            let json = config_with_policy(&format!(
                r#"{{"name": "p", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
                    "trigger": {{"type": "scheduled", "trigger_settings": {{"cron": "{expression}"}}}}}}"#
            ));
            assert_eq!(
                problems(&json).is_empty(),
                crate::policy::cron::parse(expression).is_ok(),
                "{expression}: {:?}",
                problems(&json)
            );
        }
    }

    #[test]
    fn gate_settings_are_checked_and_a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("cosign.pub");
        std::fs::write(&not_pem, "hello").unwrap();
        let not_pem = not_pem.display().to_string();
        let json = config_with_policy(&format!(
            r#"{{"name": "p", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
                "only_signed": true, "signature_public_key_file": "{not_pem}", "max_severity": "severe"}},
               {{"name": "q", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
                "signature_public_key_file": "/nonexistent/cosign.pub", "allow_unscanned": true}},
               {{"name": "r", "src_registry": {{"name": "eu"}}, "dest_registry": {{"name": "us"}},
                "only_signed": true, "signature_public_key_file": "/nonexistent/cosign.pub", "max_severity": "HIGH"}}"#
        ));
        let p = problems(&json);
        let at = |path: &str| {
            p.iter()
                .find(|x| x.path == path)
                .unwrap_or_else(|| panic!("no problem at {path}: {p:?}"))
                .message
                .clone()
        };
        assert!(
            at("policies[0].signature_public_key_file").contains(&format!("{not_pem}: not PEM"))
        );
        assert!(at("policies[0].max_severity").contains("unknown severity \"severe\""));
        assert!(at("policies[1].signature_public_key_file").contains("without `only_signed: true`"));
        assert!(at("policies[1].allow_unscanned").contains("only applies with `max_severity`"));
        assert!(at("policies[2].signature_public_key_file")
            .contains("/nonexistent/cosign.pub: cannot read it"));
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
