//! Prometheus label sets shared by more than one subsystem's metrics, declared once.
//!
//! Invariant: every label value comes from a bounded set — configured policy and registry names,
//! job kinds, fixed outcomes and directions; never a tag, digest or repository.
use prometheus_client::encoding::EncodeLabelSet;

/// `{policy}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: String,
}

/// `{policy, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyOutcome {
    pub policy: String,
    pub outcome: String,
}

/// `{policy, gate}`: which gate held a tag back (`only_signed`, `max_severity`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyGate {
    pub policy: String,
    pub gate: String,
}

/// `{policy, direction}`: which way bytes moved.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyDirection {
    pub policy: String,
    pub direction: String,
}

/// `{policy, kind, outcome}`: a job of an event kind and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub policy: String,
    pub kind: String,
    pub outcome: String,
}

/// `{registry, kind, outcome}`: a registry notification (webhook or poll) and what became of it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub registry: String,
    pub kind: String,
    pub outcome: String,
}

/// `{registry, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryOutcome {
    pub registry: String,
    pub outcome: String,
}
