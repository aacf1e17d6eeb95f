//! Registry references as Harbor writes them, resolved to the names of the config's registries.
//!
//! A policy names its registries by `name`, by Harbor's `id` (matched against the `id` a config
//! registry declares), by Harbor's `id: 0` (Harbor's own: the local registry), or not at all: in
//! Harbor a policy without `src_registry` pushes from the local Harbor and one without
//! `dest_registry` pulls into it. The local registry is the one the config marks `local` — one per
//! region; a policy that does not say its `region` uses the local registry that is not already on
//! its other side (with two regions, the other region's).
//!
//! Invariants: resolution is pure and total — a reference that cannot be resolved is a
//! [`Problem`] naming the policy's field and what to add, never a panic; a resolved policy names
//! every registry by `name`, so nothing past loading looks at ids or at the local registry; a policy
//! file (no registries to resolve against) keeps its references as written, but a policy naming
//! neither side is an error everywhere.
use super::schema::{did_you_mean, join_index, join_key};
use super::{Problem, RegistryConfig};
use crate::policy::{Policy, RegistryRef};

/// Harbor's id for itself: a reference with this id names the local registry.
pub const HARBOR_LOCAL_ID: i64 = 0;
/// The name Harbor's API gives itself inside a policy (`{"id": 0, "name": "Local", ...}`).
pub const HARBOR_LOCAL_NAME: &str = "Local";

/// What references resolve against.
pub(super) struct Known<'a> {
    /// The registries that loaded, with their ids and `local` flags.
    pub registries: &'a [RegistryConfig],
    /// Every declared name, also of registries with a schema problem; `None` for a policy file,
    /// whose references are not checked.
    pub declared: Option<&'a [String]>,
}

/// One reference of a policy and where it is in the document.
struct Site<'a> {
    reference: &'a RegistryRef,
    /// `src_registry`, `dest_registry` or `dest_registries`.
    field: &'static str,
    path: String,
}

impl Known<'_> {
    /// `policy` (at `path`) with every registry reference resolved to a name; the problems of the
    /// references that could not be are added to `problems`, and those references keep their names
    /// as written.
    pub(super) fn resolve(
        &self,
        policy: &Policy,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Policy {
        refuse_inline_secrets(policy, path, problems);
        let mut resolved = policy.clone();
        if policy.src_registry.is_unset() && policy.destinations().next().is_none() {
            problems.push(
                Problem::new(
                    join_key(path, "src_registry"),
                    format!(
                        "policy {:?} names neither `src_registry` nor `dest_registry`",
                        policy.name
                    ),
                )
                .hint(r#"Harbor replicates between its local registry and one other: name the other one, e.g. "dest_registry": {"name": "..."} to push from the local registry"#),
            );
            return resolved;
        }
        let Some(declared) = self.declared else {
            return resolved;
        };
        // Named sides first: the local registry is then the one not already on the other side.
        if let Some(named) = self.resolve_named(policy, path, declared, &mut resolved, problems) {
            self.resolve_local(policy, path, &named, &mut resolved, problems);
        }
        resolved
    }

    /// Resolves the references by name or by a non-zero id into `resolved`; their names, or `None`
    /// when one could not be resolved (which registry is local depends on the other side, so that
    /// is fixed first).
    fn resolve_named(
        &self,
        policy: &Policy,
        path: &str,
        declared: &[String],
        resolved: &mut Policy,
        problems: &mut Vec<Problem>,
    ) -> Option<Vec<String>> {
        let mut named = Vec::new();
        let mut complete = true;
        for (k, site) in sites(policy, path).enumerate() {
            if site.reference.id == Some(HARBOR_LOCAL_ID) {
                continue;
            }
            match self.by_reference(&site, declared) {
                Ok(name) => {
                    named.push(name.clone());
                    set(resolved, k, name);
                }
                Err(problem) => {
                    problems.push(problem);
                    complete = false;
                }
            }
        }
        complete.then_some(named)
    }

    /// Resolves the left-out sides and the references by Harbor's `id: 0` into `resolved`: the
    /// local registry not among `named`.
    fn resolve_local(
        &self,
        policy: &Policy,
        path: &str,
        named: &[String],
        resolved: &mut Policy,
        problems: &mut Vec<Problem>,
    ) {
        if policy.src_registry.is_unset() {
            match self.local(policy, path, named, "src_registry", "pushes from") {
                Ok(name) => resolved.src_registry = RegistryRef::named(name),
                Err(problem) => problems.extend(problem),
            }
        }
        if policy.destinations().next().is_none() {
            match self.local(policy, path, named, "dest_registry", "pulls into") {
                Ok(name) => resolved.dest_registry = Some(RegistryRef::named(name)),
                Err(problem) => problems.extend(problem),
            }
        }
        for (k, site) in sites(policy, path).enumerate() {
            if site.reference.id != Some(HARBOR_LOCAL_ID) {
                continue;
            }
            match self.local(policy, path, named, site.field, "replicates with") {
                Ok(name)
                    if matches!(site.reference.name.as_str(), "" | HARBOR_LOCAL_NAME)
                        || site.reference.name == name =>
                {
                    set(resolved, k, name);
                }
                Ok(name) => problems.push(
                    Problem::new(
                        join_key(&site.path, "id"),
                        format!(
                            "`name` {:?} and `id` 0 disagree: id 0 is Harbor's local registry, which is {name:?} in `registries`",
                            site.reference.name
                        ),
                    )
                    .hint(format!(
                        r#"keep "id": 0 with "name": "{HARBOR_LOCAL_NAME}" (as Harbor shows it) or "{name}", or name the other registry without an id"#
                    )),
                ),
                Err(problem) => problems.extend(problem),
            }
        }
    }

    /// The name of the registry a reference with a name and/or a non-zero id names.
    fn by_reference(&self, site: &Site, declared: &[String]) -> Result<String, Problem> {
        let reference = site.reference;
        let Some(id) = reference.id else {
            return check_declared(&reference.name, join_key(&site.path, "name"), declared);
        };
        let id_path = join_key(&site.path, "id");
        let by_id = self.registries.iter().find(|r| r.id == Some(id));
        match by_id {
            Some(registry) if reference.name.is_empty() || reference.name == registry.name => {
                Ok(registry.name.clone())
            }
            Some(registry) => Err(Problem::new(
                id_path,
                format!(
                    "`name` {:?} and `id` {id} disagree: id {id} is registry {:?} in `registries`",
                    reference.name, registry.name
                ),
            )
            .hint("Harbor's ids are per Harbor: fix the reference's name or id, or the `id` the config's registry declares")),
            None if reference.name.is_empty() => {
                let ids: Vec<String> = self
                    .registries
                    .iter()
                    .filter_map(|r| r.id.map(|id| format!("{id} ({})", r.name)))
                    .collect();
                let known = if ids.is_empty() {
                    "no registry declares an id".to_string()
                } else {
                    format!("declared ids: {}", ids.join(", "))
                };
                Err(Problem::new(id_path, format!("no registry has `id` {id}")).hint(format!(
                    r#"add "id": {id} to that registry in `registries` (Harbor's id of it), or name it: "name": "..."; {known}"#
                )))
            }
            None => {
                let name = check_declared(&reference.name, join_key(&site.path, "name"), declared)?;
                match self.registries.iter().find(|r| r.name == name).and_then(|r| r.id) {
                    Some(declared_id) => Err(Problem::new(
                        id_path,
                        format!(
                            "`name` {name:?} and `id` {id} disagree: registry {name:?} has id {declared_id} in `registries`"
                        ),
                    )
                    .hint("Harbor's ids are per Harbor: fix the reference's id, or the `id` the config's registry declares")),
                    // The registry declares no id: the name decides.
                    None => Ok(name),
                }
            }
        }
    }

    /// The local registry `policy` (at `policy_path`) uses for `field` (which it `verb`), not one
    /// of `others`. `None` as the error: the answer depends on a registry that did not load (its
    /// problem is reported already).
    fn local(
        &self,
        policy: &Policy,
        policy_path: &str,
        others: &[String],
        field: &str,
        verb: &str,
    ) -> Result<String, Option<Problem>> {
        let in_region = |r: &&RegistryConfig| match (&policy.region, &r.region) {
            (Some(wanted), Some(region)) => wanted == region,
            _ => true,
        };
        let candidates: Vec<&RegistryConfig> = self
            .registries
            .iter()
            .filter(|r| r.local)
            .filter(in_region)
            .filter(|r| !others.contains(&r.name))
            .collect();
        let path = join_key(policy_path, field);
        match candidates.as_slice() {
            [only] => Ok(only.name.clone()),
            [] if self.some_did_not_load() => Err(None),
            [] => Err(Some(
                Problem::new(
                    path,
                    format!(
                        "policy {:?} has no `{field}`, so it {verb} the local registry, and no registry{} is marked `local`",
                        policy.name,
                        policy.region.as_ref().map(|r| format!(" of region {r:?}")).unwrap_or_default()
                    ),
                )
                .hint(format!(
                    r#"add "local": true to the registry this policy's Harbor is, in `registries` (one per region), or add "{field}": {{"name": "..."}}"#
                )),
            )),
            several => Err(Some(
                Problem::new(
                    path,
                    format!(
                        "policy {:?} has no `{field}`, and several registries are local: {}",
                        policy.name,
                        several.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )
                .hint(format!(
                    r#"set the policy's "region" to the region whose Harbor it belongs to, or add "{field}": {{"name": "..."}}"#
                )),
            )),
        }
    }

    /// Whether a declared registry did not load (a schema problem), so it may be the local one.
    fn some_did_not_load(&self) -> bool {
        self.declared.is_some_and(|d| {
            d.iter()
                .any(|n| !self.registries.iter().any(|r| &r.name == n))
        })
    }
}

/// A pasted credential secret in any reference of `policy` (at `path`) is a problem; the secret is
/// never echoed.
fn refuse_inline_secrets(policy: &Policy, path: &str, problems: &mut Vec<Problem>) {
    for site in sites(policy, path).filter(|s| s.reference.has_inline_secret()) {
        problems.push(
            Problem::new(
                join_key(&join_key(&site.path, "credential"), "access_secret"),
                "a secret in a policy: Harbor's API shows it masked, and Ferry takes secrets only from the config's registries",
            )
            .hint(r#"write "*****" (as Harbor shows it) or remove `credential`; give the registry's secret in `registries` by `password_env`, `password_file` or an auth file"#),
        );
    }
}

/// The policy's references in order: the source first, then `dest_registry`, then each of
/// `dest_registries`.
fn sites<'a>(policy: &'a Policy, path: &str) -> impl Iterator<Item = Site<'a>> {
    let source = (!policy.src_registry.is_unset()).then(|| Site {
        reference: &policy.src_registry,
        field: "src_registry",
        path: join_key(path, "src_registry"),
    });
    let dest = policy.dest_registry.as_ref().map(|reference| Site {
        reference,
        field: "dest_registry",
        path: join_key(path, "dest_registry"),
    });
    let many = join_key(path, "dest_registries");
    let dests = policy
        .dest_registries
        .iter()
        .enumerate()
        .map(move |(k, reference)| Site {
            reference,
            field: "dest_registries",
            path: join_index(&many, k),
        });
    [source, dest].into_iter().flatten().chain(dests)
}

/// Makes the `k`th reference of [`sites`] in `policy` a reference by `name` (positions come from
/// [`sites`] of the same policy; a position that is not there changes nothing).
fn set(policy: &mut Policy, k: usize, name: String) {
    let source = usize::from(!policy.src_registry.is_unset());
    let slot = match (k.checked_sub(source), &mut policy.dest_registry) {
        (None, _) => Some(&mut policy.src_registry),
        (Some(0), Some(dest)) => Some(dest),
        (Some(k), Some(_)) => policy.dest_registries.get_mut(k - 1),
        (Some(k), None) => policy.dest_registries.get_mut(k),
    };
    if let Some(slot) = slot {
        *slot = RegistryRef::named(name);
    }
}

/// `name` (at `path`) is a declared registry.
fn check_declared(name: &str, path: String, declared: &[String]) -> Result<String, Problem> {
    if name.is_empty() {
        return Err(Problem::new(path, "registry name is empty")
            .hint("name a registry declared in `registries`"));
    }
    if declared.iter().any(|d| d == name) {
        return Ok(name.to_string());
    }
    let mut hint = if declared.is_empty() {
        "no registries are declared; add one to `registries` (or validate a bare policy, or an array of policies, on its own)".to_string()
    } else {
        format!("declared registries: {}", declared.join(", "))
    };
    if let Some(suggestion) = did_you_mean(name, declared) {
        hint = format!("did you mean `{suggestion}`? {hint}");
    }
    Err(Problem::new(path, format!("unknown registry {name:?}")).hint(hint))
}

#[cfg(test)]
mod tests {
    use crate::config::load::testing::{paths, problems};
    use crate::config::{Config, Problem};

    /// Two Harbors in two regions, each its region's local registry; `harbor-2` is Harbor id 1.
    const TWO_HARBORS: &str = r#"[
        {"name": "harbor-1", "url": "https://h1.example", "region": "r1", "local": true},
        {"name": "harbor-2", "id": 1, "url": "https://h2.example", "region": "r2", "local": true},
        {"name": "hub", "id": 7, "url": "https://hub.example"}]"#;

    fn config(registries: &str, policy: &str) -> String {
        format!(
            r#"{{"regions": [{{"name": "r1", "forward_url": "https://a1:9444"}},
                             {{"name": "r2", "forward_url": "https://a2:9444"}}],
                "registries": {registries}, "policies": [{policy}]}}"#
        )
    }

    /// The loaded policy's source and destinations by name.
    fn sides(json: &str) -> (String, Vec<String>) {
        let config = Config::from_slice(json.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        let p = &config.policies[0];
        let dests = p.destinations().map(|d| d.name.clone()).collect();
        (p.src_registry.name.clone(), dests)
    }

    fn only(problems: Vec<Problem>) -> Problem {
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems
            .into_iter()
            .next()
            .unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn a_policy_without_src_registry_pushes_from_the_local_registry_not_at_its_destination() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "dest_registry": {"name": "harbor-2"}}"#,
        );
        assert_eq!(sides(&json), ("harbor-1".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn a_null_src_registry_is_left_out_as_harbors_clients_send_it() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "src_registry": null, "dest_registry": {"id": 1}}"#,
        );
        assert_eq!(sides(&json), ("harbor-1".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn a_policy_without_dest_registry_pulls_into_the_local_registry_not_at_its_source() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "src_registry": {"name": "harbor-1"}}"#,
        );
        assert_eq!(sides(&json), ("harbor-1".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn the_policys_region_picks_its_local_registry() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "region": "r2", "mode": "pull", "src_registry": {"name": "hub"}}"#,
        );
        assert_eq!(sides(&json), ("hub".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn a_reference_by_id_alone_names_the_registry_declaring_that_id() {
        let json = config(TWO_HARBORS, r#"{"name": "p", "dest_registry": {"id": 1}}"#);
        assert_eq!(sides(&json), ("harbor-1".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn id_zero_is_the_local_registry_whatever_harbors_api_calls_it() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "src_registry": {"id": 0, "name": "Local"}, "dest_registry": {"id": 1, "name": "harbor-2"}}"#,
        );
        assert_eq!(sides(&json), ("harbor-1".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn a_name_that_is_not_the_local_registry_beside_id_zero_is_a_mismatch() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "src_registry": {"id": 0, "name": "hub"}, "dest_registry": {"name": "harbor-2"}}"#,
        );
        let p = only(problems(&json));
        assert_eq!(p.path, "policies[0].src_registry.id");
        assert!(
            p.message.contains(r#""hub""#) && p.message.contains(r#""harbor-1""#),
            "{p}"
        );
    }

    #[test]
    fn a_reference_whose_name_and_id_name_different_registries_names_both() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "dest_registry": {"id": 7, "name": "harbor-2"}}"#,
        );
        let p = only(problems(&json));
        assert_eq!(p.path, "policies[0].dest_registry.id");
        assert_eq!(
            p.message,
            r#"`name` "harbor-2" and `id` 7 disagree: id 7 is registry "hub" in `registries`"#
        );
    }

    #[test]
    fn an_id_other_than_the_one_the_named_registry_declares_is_a_mismatch() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "dest_registry": {"id": 2, "name": "harbor-2"}}"#,
        );
        let p = only(problems(&json));
        assert_eq!(p.path, "policies[0].dest_registry.id");
        assert!(p.message.contains("has id 1"), "{p}");
    }

    #[test]
    fn an_id_beside_the_name_of_a_registry_declaring_none_is_not_checked() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "src_registry": {"id": 3, "name": "harbor-1"}, "dest_registry": {"name": "harbor-2"}}"#,
        );
        assert_eq!(sides(&json), ("harbor-1".into(), vec!["harbor-2".into()]));
    }

    #[test]
    fn an_id_no_registry_declares_lists_the_declared_ids() {
        let json = config(TWO_HARBORS, r#"{"name": "p", "dest_registry": {"id": 9}}"#);
        let p = only(problems(&json));
        assert_eq!(p.path, "policies[0].dest_registry.id");
        assert_eq!(p.message, "no registry has `id` 9");
        assert!(
            p.hint
                .as_deref()
                .is_some_and(|h| h.contains("1 (harbor-2), 7 (hub)")),
            "{p}"
        );
    }

    #[test]
    fn a_policy_naming_neither_side_is_an_error_also_in_a_policy_file() {
        let neither = r#"{"name": "p", "filters": [{"type": "name", "value": "**"}]}"#;
        assert_eq!(paths(neither), ["src_registry"]);
        let p = only(problems(&config(TWO_HARBORS, neither)));
        assert_eq!(p.path, "policies[0].src_registry");
        assert!(p.message.contains(r#"policy "p""#), "{p}");
    }

    #[test]
    fn without_a_local_registry_a_left_out_side_names_the_policy_the_field_and_what_to_add() {
        let registries = r#"[{"name": "a", "url": "https://a.example"}]"#;
        let p = only(problems(&config(
            registries,
            r#"{"name": "p", "dest_registry": {"name": "a"}}"#,
        )));
        assert_eq!(p.path, "policies[0].src_registry");
        assert!(
            p.message.contains(r#"policy "p" has no `src_registry`"#),
            "{p}"
        );
        assert!(
            p.hint
                .as_deref()
                .is_some_and(|h| h.contains(r#""local": true"#)),
            "{p}"
        );
    }

    #[test]
    fn several_candidate_local_registries_without_a_policy_region_are_ambiguous() {
        let three = r#"[
            {"name": "h1", "url": "https://h1.example", "region": "r1", "local": true},
            {"name": "h2", "url": "https://h2.example", "region": "r2", "local": true},
            {"name": "hub", "url": "https://hub.example"}]"#;
        let p = only(problems(&config(
            three,
            r#"{"name": "p", "src_registry": {"name": "hub"}}"#,
        )));
        assert_eq!(p.path, "policies[0].dest_registry");
        assert!(p.message.contains("h1, h2"), "{p}");
        assert!(
            p.hint.as_deref().is_some_and(|h| h.contains(r#""region""#)),
            "{p}"
        );
    }

    #[test]
    fn a_local_registry_that_did_not_load_is_not_reported_missing() {
        let registries = r#"[
            {"name": "h1", "url": "https://h1.example", "local": true, "bogus": 1},
            {"name": "h2", "url": "https://h2.example"}]"#;
        let json = format!(
            r#"{{"registries": {registries}, "policies": [{{"name": "p", "dest_registry": {{"name": "h2"}}}}]}}"#
        );
        assert_eq!(paths(&json), ["registries[0].bogus"]);
    }

    #[test]
    fn an_unmasked_secret_in_an_embedded_registry_is_refused_without_echoing_it() {
        let json = config(
            TWO_HARBORS,
            r#"{"name": "p", "dest_registry": {"name": "harbor-2",
                "credential": {"type": "basic", "access_key": "robot", "access_secret": "hunter2"}}}"#,
        );
        let p = only(problems(&json));
        assert_eq!(p.path, "policies[0].dest_registry.credential.access_secret");
        assert!(!p.to_string().contains("hunter2"), "{p}");
        let masked = json.replace("hunter2", "*****");
        assert!(problems(&masked).is_empty());
    }

    #[test]
    fn registry_ids_are_unique_and_a_region_has_one_local_registry() {
        let registries = r#"[
            {"name": "a", "id": 1, "url": "https://a.example", "region": "r1", "local": true},
            {"name": "b", "id": 1, "url": "https://b.example", "region": "r1", "local": true},
            {"name": "c", "url": "https://c.example", "region": "r2", "local": true}]"#;
        let json = format!(
            r#"{{"regions": [{{"name": "r1", "forward_url": "https://a1:9444"}},
                             {{"name": "r2", "forward_url": "https://a2:9444"}}],
                "registries": {registries}}}"#
        );
        assert_eq!(paths(&json), ["registries[1].id", "registries[1].local"]);
    }
}
