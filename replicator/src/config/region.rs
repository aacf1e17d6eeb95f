//! Where a process runs: one named region of a multi-region deployment, or a single site.
//!
//! Invariant: this is the one place an unset or blank `--region` is normalised; everything else
//! asks [`Region::name`] (`None` on a single site) instead of testing for an empty string. Records
//! that store a region (history, the tag ledger, the worker list) store [`Region::recorded`].
use std::fmt;

/// This process's region, or none on a single site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Region(Option<String>);

impl Region {
    /// A single site: every event is handled here and nothing is forwarded.
    pub fn single_site() -> Region {
        Region(None)
    }

    /// The region named `name` (surrounding blanks ignored); a blank name is a single site.
    pub fn new(name: &str) -> Region {
        let name = name.trim();
        Region((!name.is_empty()).then(|| name.to_string()))
    }

    /// The region's name; `None` on a single site.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Whether this is the region named `name` (never on a single site).
    pub fn is(&self, name: &str) -> bool {
        self.name() == Some(name)
    }

    /// Whether work placed in region `name` runs here: in that region, or anywhere on a single
    /// site.
    pub fn runs(&self, name: &str) -> bool {
        self.name().is_none_or(|ours| ours == name)
    }

    /// The form records store: the name, or an empty string on a single site.
    pub fn recorded(&self) -> String {
        self.name().unwrap_or_default().to_string()
    }
}

impl From<&str> for Region {
    fn from(name: &str) -> Region {
        Region::new(name)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or("this site"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_region_is_a_single_site() {
        assert_eq!(Region::new("  "), Region::single_site());
        assert_eq!(Region::new("").name(), None);
        assert_eq!(Region::single_site().recorded(), "");
        assert_eq!(Region::single_site().to_string(), "this site");
    }

    #[test]
    fn a_named_region_is_trimmed_and_is_only_itself() {
        let eu = Region::new(" eu ");
        assert_eq!(eu.name(), Some("eu"));
        assert!(eu.is("eu"));
        assert!(!eu.is("us"));
        assert!(!Region::single_site().is(""));
    }

    #[test]
    fn a_single_site_runs_work_of_every_region_and_a_region_only_its_own() {
        assert!(Region::single_site().runs("us"));
        assert!(Region::new("eu").runs("eu"));
        assert!(!Region::new("eu").runs("us"));
    }
}
