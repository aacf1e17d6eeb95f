//! Who may call which admin RPC: the two roles and the one table mapping every `ferry.v1` admin
//! method to the role it needs.
//!
//! # Invariants
//! - [`RPCS`] is the only place an RPC's role is decided; a unit test enumerates the services of
//!   the compiled `admin.proto` descriptor and fails when a method is missing from the table (or
//!   the table names one that no longer exists), so a new RPC cannot be forgotten.
//! - A path the table does not know needs [`Role::Operator`] (fail closed).
//! - Static admin tokens and anonymous loopback access are [`Role::Operator`], as before roles
//!   existed; only OIDC tokens can be [`Role::Viewer`].
use std::fmt;

/// What an authenticated caller may do. `Operator` includes everything `Viewer` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only calls: list, get, watch, stats, drift reports, registry pings.
    Viewer,
    /// Everything: also runs, stops, pauses and resumes, stores and deletes policies and
    /// registries, retries and purges dead letters.
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

use Role::{Operator, Viewer};

/// Every admin RPC (its gRPC path) and the role it needs.
pub const RPCS: &[(&str, Role)] = &[
    ("/ferry.v1.Policies/ListPolicies", Viewer),
    ("/ferry.v1.Policies/GetPolicy", Viewer),
    ("/ferry.v1.Policies/PutPolicy", Operator),
    ("/ferry.v1.Policies/DeletePolicy", Operator),
    ("/ferry.v1.Policies/SetPolicyEnabled", Operator),
    ("/ferry.v1.Registries/ListRegistries", Viewer),
    ("/ferry.v1.Registries/GetRegistry", Viewer),
    ("/ferry.v1.Registries/PutRegistry", Operator),
    ("/ferry.v1.Registries/DeleteRegistry", Operator),
    // Reads the registry (version check and capability probes) and changes nothing.
    ("/ferry.v1.Registries/PingRegistry", Viewer),
    ("/ferry.v1.Executions/StartExecution", Operator),
    ("/ferry.v1.Executions/StopExecution", Operator),
    ("/ferry.v1.Executions/ListExecutions", Viewer),
    ("/ferry.v1.Executions/GetExecution", Viewer),
    ("/ferry.v1.Executions/ListTasks", Viewer),
    ("/ferry.v1.Executions/WatchExecution", Viewer),
    // A report: lists both registries, enqueues nothing.
    ("/ferry.v1.Drift/Diff", Viewer),
    ("/ferry.v1.Operations/GetQueueStats", Viewer),
    ("/ferry.v1.Operations/ListDeadLetters", Viewer),
    ("/ferry.v1.Operations/RetryDeadLetter", Operator),
    ("/ferry.v1.Operations/PurgeDeadLetters", Operator),
    ("/ferry.v1.Operations/ListWorkers", Viewer),
    ("/ferry.v1.Operations/PausePolicy", Operator),
    ("/ferry.v1.Operations/ResumePolicy", Operator),
];

/// The role the RPC at `path` (`/package.Service/Method`) needs; [`Role::Operator`] for a path
/// the table does not know.
pub fn required(path: &str) -> Role {
    RPCS.iter()
        .find(|(p, _)| *p == path)
        .map_or(Operator, |(_, role)| *role)
}

/// Whether `role` may call the RPC at `path`; `PERMISSION_DENIED` naming the role needed if not.
pub fn check(role: Role, path: &str) -> Result<(), tonic::Status> {
    let needed = required(path);
    if role >= needed {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "{path} needs the {needed} role; this token grants {role}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The gRPC paths of every method of the services `admin.proto` declares, from the descriptor
    /// the server's reflection serves.
    fn admin_proto_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(ferry_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let admin = set
            .file
            .iter()
            .find(|f| f.name() == "ferry/v1/admin.proto")
            .expect("admin.proto is in the descriptor set");
        admin
            .service
            .iter()
            .flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/{}.{}/{}", admin.package(), s.name(), m.name()))
            })
            .collect()
    }

    #[test]
    fn every_admin_rpc_in_the_proto_has_exactly_one_role_in_the_table() {
        let methods = admin_proto_methods();
        assert!(methods.len() >= 20, "too few methods found: {methods:?}");
        let missing: Vec<&String> = methods
            .iter()
            .filter(|m| !RPCS.iter().any(|(p, _)| p == m))
            .collect();
        assert!(
            missing.is_empty(),
            "RPCs without a role in RPCS: {missing:?}"
        );
        let stale: Vec<&str> = RPCS
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !methods.iter().any(|m| m == p))
            .collect();
        assert!(
            stale.is_empty(),
            "RPCS names RPCs the proto lacks: {stale:?}"
        );
        let mut paths: Vec<&str> = RPCS.iter().map(|(p, _)| *p).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), RPCS.len(), "an RPC is listed twice");
    }

    #[test]
    fn a_viewer_reads_but_is_denied_writes_naming_the_operator_role() {
        assert!(check(Viewer, "/ferry.v1.Policies/ListPolicies").is_ok());
        assert!(check(Viewer, "/ferry.v1.Executions/WatchExecution").is_ok());
        let denied = check(Viewer, "/ferry.v1.Executions/StopExecution").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("needs the operator role"),
            "{denied:?}"
        );
        assert!(check(Viewer, "/ferry.v1.Policies/PutPolicy").is_err());
    }

    #[test]
    fn an_operator_may_call_everything() {
        for (path, _) in RPCS {
            assert!(check(Operator, path).is_ok(), "{path}");
        }
    }

    #[test]
    fn an_unknown_path_needs_the_operator_role() {
        assert_eq!(required("/ferry.v1.Policies/SomethingNew"), Operator);
        assert!(check(Viewer, "/ferry.v1.Policies/SomethingNew").is_err());
    }
}
