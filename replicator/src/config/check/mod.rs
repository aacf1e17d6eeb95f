//! Semantic checks of a well-typed [`Config`]: everything the schema cannot say.
//!
//! One file per concern: [`registries`] (names, URLs, sizes, credential references),
//! [`policies`] (names, registry references — resolved by [`super::references`] —, destinations,
//! namespace, trigger, filters) and
//! [`regions`] (names, forward URLs, which region a policy runs in). Cron expressions are checked
//! by [`crate::policy::cron::parse`], the scheduler's own parser.
//!
//! Invariants: every problem is reported (no check stops at the first one), each with its JSON
//! path and, where there is something useful to say, a hint; problems come out in document order
//! (registries, then policies, then regions); nothing here does I/O or echoes a value that could be
//! a secret.
mod policies;
mod regions;
mod registries;

use super::references::Known;
use super::schema::join_key;
use super::shape::Shape;
use super::{Config, Problem};

impl Config {
    /// The document loaded as `shape` with its registry references resolved to names
    /// ([`super::references`]), and every semantic problem. References are checked and resolved
    /// only when `check_registry_refs` (a policy file has no registries to check them against).
    pub(super) fn check(&self, shape: Shape, check_registry_refs: bool) -> (Config, Vec<Problem>) {
        let declared =
            check_registry_refs.then(|| self.registries.iter().map(|r| r.name.clone()).collect());
        self.check_against(shape, declared)
    }

    /// [`Config::check`] with the registry names references may use (`None`: references are not
    /// checked); a document's registries that could not be loaded still count as declared.
    pub(super) fn check_against(
        &self,
        shape: Shape,
        declared: Option<Vec<String>>,
    ) -> (Config, Vec<Problem>) {
        let mut problems = Vec::new();
        registries::check(&self.registries, &mut problems);
        let known = Known {
            registries: &self.registries,
            declared: declared.as_deref(),
        };
        let resolved = Config {
            policies: policies::check(&self.policies, shape, &known, &mut problems),
            ..self.clone()
        };
        // Regions are checked on the resolved policies: a Harbor policy's left-out side counts.
        regions::check(&resolved, shape, &mut problems);
        (resolved, problems)
    }
}

/// Names seen so far in one list (registries, policies or regions), with the path of each first
/// use, so that a duplicate can say where the name is already used.
#[derive(Default)]
struct FirstUse {
    seen: Vec<(String, String)>,
}

impl FirstUse {
    /// `None` when `name` is new (and remembers it at `path`); else the path of its first use.
    fn record(&mut self, name: &str, path: &str) -> Option<&str> {
        match self.seen.iter().position(|(n, _)| n == name) {
            Some(i) => Some(self.seen[i].1.as_str()),
            None => {
                self.seen.push((name.to_string(), path.to_string()));
                None
            }
        }
    }
}

/// How a list of named things (registries, regions) words its name problems.
struct NameRules {
    /// `registry` or `region`.
    what: &'static str,
    /// The hint of an empty name.
    empty_hint: &'static str,
    /// Said after "already used by <path>" for a duplicate.
    duplicate_note: &'static str,
}

impl FirstUse {
    /// The `name` of the entry at `path`: not blank, and not used by an earlier entry.
    fn check_name(
        &mut self,
        rules: &NameRules,
        name: &str,
        path: &str,
        problems: &mut Vec<Problem>,
    ) {
        let at = join_key(path, "name");
        if name.trim().is_empty() {
            let message = format!("{} name is empty", rules.what);
            problems.push(Problem::new(at, message).hint(rules.empty_hint));
        } else if let Some(first) = self.record(name, path) {
            let message = format!("duplicate {} name {name:?}", rules.what);
            let hint = format!("already used by {first}{}", rules.duplicate_note);
            problems.push(Problem::new(at, message).hint(hint));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FirstUse;

    #[test]
    fn first_use_names_the_path_where_a_name_was_first_seen() {
        let mut names = FirstUse::default();
        assert_eq!(names.record("a", "x[0]"), None);
        assert_eq!(names.record("b", "x[1]"), None);
        assert_eq!(names.record("a", "x[2]"), Some("x[0]"));
        assert_eq!(
            names.record("a", "x[3]"),
            Some("x[0]"),
            "the first use, not the last"
        );
    }
}
