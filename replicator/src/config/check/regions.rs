//! Checks of `regions` and of the regions registries and policies name: unique non-empty region
//! names with an http(s) `forward_url`; every region named is declared; a pull or bidirectional
//! policy writes to one region (or says where it runs).
//!
//! Invariant: a policy file (a bare policy or an array) has no `regions`, so the regions its
//! policies name are not checked against anything.
use super::{FirstUse, NameRules};
use crate::config::schema::{join_index, join_key};
use crate::config::shape::Shape;
use crate::config::{Config, Problem, RegionConfig};
use crate::policy::{Mode, Policy};

/// Every region problem of `config`, loaded as `shape`.
pub(super) fn check(config: &Config, shape: Shape, problems: &mut Vec<Problem>) {
    check_declared(&config.regions, problems);
    // A policy file has no `regions` to check its `region` against.
    let known = Known {
        declared: config.regions.iter().map(|r| r.name.clone()).collect(),
        bare: !matches!(shape, Shape::Config),
    };
    for (i, registry) in config.registries.iter().enumerate() {
        if let Some(region) = &registry.region {
            let path = join_key(&join_index("registries", i), "region");
            known.check(region, path, problems);
        }
    }
    for (i, policy) in config.policies.iter().enumerate() {
        let path = shape.policy_path(i);
        match &policy.region {
            Some(region) => known.check(region, join_key(&path, "region"), problems),
            None => check_destination_regions(config, policy, &path, problems),
        }
    }
}

const NAMES: NameRules = NameRules {
    what: "region",
    empty_hint: "use the name given to `--region` in that region",
    duplicate_note: "",
};

/// The `regions` list itself: names unique and non-empty, forward URLs http(s) with a host.
fn check_declared(regions: &[RegionConfig], problems: &mut Vec<Problem>) {
    let mut names = FirstUse::default();
    for (i, region) in regions.iter().enumerate() {
        let path = join_index("regions", i);
        names.check_name(&NAMES, &region.name, &path, problems);
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
}

/// The declared region names, and whether references to them are checked at all.
struct Known {
    declared: Vec<String>,
    /// A policy file: nothing to check against.
    bare: bool,
}

impl Known {
    fn check(&self, name: &str, path: String, problems: &mut Vec<Problem>) {
        if self.bare || self.declared.iter().any(|d| d == name) {
            return;
        }
        let hint = if self.declared.is_empty() {
            "declare the regions in `regions` (name and forward_url of each)".to_string()
        } else {
            format!("declared regions: {}", self.declared.join(", "))
        };
        problems.push(Problem::new(path, format!("unknown region {name:?}")).hint(hint));
    }
}

/// A pull or bidirectional policy without `region` runs in its destination's region, so its
/// destinations must all be in one region.
fn check_destination_regions(
    config: &Config,
    policy: &Policy,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    if policy.mode == Mode::Push {
        return;
    }
    let mut regions: Vec<&str> = policy
        .destinations()
        .filter_map(|d| config.registry(&d.name)?.region.as_deref())
        .collect();
    regions.sort_unstable();
    regions.dedup();
    if regions.len() > 1 {
        problems.push(
            Problem::new(
                join_key(path, "dest_registries"),
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

#[cfg(test)]
mod tests {
    use crate::config::load::testing::problems;

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
}
