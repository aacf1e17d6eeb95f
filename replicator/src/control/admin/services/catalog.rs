//! The `Policies` and `Registries` services: the region's catalog as the API shows it, and changes
//! to its stored part.
//!
//! Invariants: a document is checked against the region (the other policies and registries, and
//! credentials resolvable on this host) before it is stored, and every problem is reported with
//! its path in the document; entries of the config file cannot be changed or deleted through the
//! API (only a policy's `enabled` flag); a registry still used by a policy cannot be deleted; a
//! change is answered only after every process of the region applied it.
use std::time::{Duration, Instant};

use ferry_proto::v1 as pb;
use tonic::Request;

use super::{ok, Admin, AdminError, Result, Snapshot};
use crate::catalog::{PolicySource, WATCH_EVERY};
use crate::replicate::Registries;

/// Whether `client`'s registry has the OCI 1.1 referrers API and accepts chunked uploads, probed in
/// `repository` (a five-byte chunk in an upload session that is cancelled; distribution answers
/// `Range: 0-0` to a one-byte chunk and to none, so one byte would prove nothing); what the probes could
/// not tell goes to `notes`.
async fn probe_capabilities(
    client: &crate::oci::RegistryClient,
    repository: &str,
    notes: &mut Vec<String>,
) -> (bool, bool) {
    let zero = crate::oci::digest::parse(&format!("sha256:{}", "0".repeat(64)))
        .expect("a well-formed digest");
    let referrers = match client.referrers(repository, &zero).await {
        Ok(found) => found.is_some(),
        Err(e) => {
            notes.push(format!("referrers API: cannot tell ({e})"));
            false
        }
    };
    // A probe never creates anything: a Harbor project a write would create is left alone.
    match client.harbor_project_to_create(repository).await {
        Ok(None) => {}
        Ok(Some(project)) => {
            notes.push(format!("chunked upload: not probed, Harbor project {project} does not exist and a probe does not create it; name a repository of an existing project"));
            return (referrers, false);
        }
        Err(e) => {
            notes.push(format!("chunked upload: cannot tell ({e})"));
            return (referrers, false);
        }
    }
    let chunked = match client.start_upload(repository).await {
        Ok(upload) => {
            let r = client
                .patch_chunk(
                    &upload,
                    &crate::oci::digest::sha256(b"ferry"),
                    bytes::Bytes::from_static(b"ferry"),
                )
                .await;
            client.cancel_upload(&upload).await;
            match r {
                Ok(_) => true,
                Err(e) => {
                    notes.push(format!("chunked upload refused: {e}"));
                    false
                }
            }
        }
        Err(e) => {
            notes.push(format!("chunked upload: cannot tell, opening an upload session in {repository} failed ({e})"));
            false
        }
    };
    (referrers, chunked)
}

/// The problems found at or below the JSON path `prefix` of a merged config (`policies[3]`), as
/// lines with paths relative to that entry (`filters[0].value: …`): what a document sent to the API
/// did wrong, in its own terms.
fn problems_under(problems: Vec<crate::config::Problem>, prefix: &str) -> Vec<String> {
    problems
        .into_iter()
        .filter_map(|mut p| {
            let rest = p.path.strip_prefix(prefix)?;
            // `policies[1]` must not claim `policies[12]`.
            let rest = match rest.strip_prefix('.') {
                Some(r) => r.to_string(),
                None if rest.is_empty() || rest.starts_with('[') => rest.to_string(),
                None => return None,
            };
            p.path = rest;
            Some(p.to_string())
        })
        .collect()
}

/// Waits until every process of the region applied a policy change (they check the store every
/// [`WATCH_EVERY`]), so that a run started right after the answer finds the policy everywhere.
async fn until_applied() {
    tokio::time::sleep(WATCH_EVERY + Duration::from_millis(500)).await;
}

impl Admin {
    /// Validates one policy document against the region's registries and other policies, and
    /// resolves its registry references (Harbor's ids, the local registry) to names; every
    /// problem is reported with its path in the document.
    fn check_new_policy(
        &self,
        snapshot: &Snapshot,
        json: &str,
    ) -> std::result::Result<crate::policy::Policy, AdminError> {
        let invalid = |violations: Vec<String>| AdminError::InvalidArgument { violations };
        // Structural problems (JSON, types, unknown fields) come from the file validator with
        // their paths; a well-formed policy is then checked against the region's registries and
        // policies, which reports its semantic problems and the cross-references together.
        let policy = match crate::config::Config::from_slice(json.as_bytes(), "policy") {
            Ok(parsed) => match parsed.policies.as_slice() {
                [policy] if parsed.registries.is_empty() => policy.clone(),
                _ => {
                    return Err(invalid(vec![
                        "$: send exactly one policy object (not an array or a config file)".into(),
                    ]))
                }
            },
            Err(e) => serde_json::from_str::<crate::policy::Policy>(json)
                .map_err(|_| invalid(e.problems.iter().map(ToString::to_string).collect()))?,
        };
        let policy = &policy;
        if self.state.config.policy(&policy.name).is_some() {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {:?} is defined in the config file, which the API cannot change (only its `enabled` flag); edit the file or choose another name",
                policy.name
            )));
        }
        let mut merged = snapshot.config.clone();
        merged.policies.retain(|p| p.name != policy.name);
        merged.policies.push(policy.clone());
        let prefix = format!("policies[{}]", merged.policies.len() - 1);
        // Resolved against the region's registries: a Harbor policy's ids and left-out sides are
        // stored as names, so every process reads the same registries whatever changes later.
        let (resolved, problems) = merged.resolve();
        let problems = problems_under(problems, &prefix);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        resolved
            .policies
            .last()
            .cloned()
            .ok_or_else(|| AdminError::Internal("the resolved config lost the new policy".into()))
    }

    /// Validates one registry document against the region (structure, name, URL, credentials
    /// resolvable on this host); every problem is reported with its path in the document.
    fn check_new_registry(
        &self,
        snapshot: &Snapshot,
        json: &str,
    ) -> std::result::Result<crate::config::RegistryConfig, AdminError> {
        let invalid = |violations: Vec<String>| AdminError::InvalidArgument { violations };
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| invalid(vec![format!("$: not valid JSON: {e}")]))?;
        let wrapped = serde_json::json!({ "registries": [value] }).to_string();
        let registry = match crate::config::Config::from_slice(wrapped.as_bytes(), "registry") {
            Ok(c) => c
                .registries
                .into_iter()
                .next()
                .ok_or_else(|| invalid(vec!["$: send one registry object".into()]))?,
            Err(e) => {
                let problems = problems_under(e.problems, "registries[0]");
                return Err(invalid(if problems.is_empty() {
                    vec!["$: send one registry object".into()]
                } else {
                    problems
                }));
            }
        };
        if self.state.config.registry(&registry.name).is_some() {
            return Err(AdminError::FailedPrecondition(format!(
                "registry {:?} is defined in the config file, which the API cannot change; edit the file or choose another name",
                registry.name
            )));
        }
        let mut merged = snapshot.config.clone();
        merged.registries.retain(|r| r.name != registry.name);
        merged.registries.push(registry.clone());
        let prefix = format!("registries[{}]", merged.registries.len() - 1);
        let problems = problems_under(merged.validate(), &prefix);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        // Only the references the operator allowed; then they must resolve here (env var set,
        // file readable).
        self.state
            .registries
            .credential_rules()
            .check(&registry)
            .map_err(|problems| invalid(problems.iter().map(ToString::to_string).collect()))?;
        Registries::from_config(&merged).map_err(|e| invalid(vec![format!("credential: {e}")]))?;
        Ok(registry)
    }
}

#[tonic::async_trait]
impl pb::policies_server::Policies for Admin {
    async fn list_policies(
        &self,
        _: Request<pb::ListPoliciesRequest>,
    ) -> Result<pb::ListPoliciesResponse> {
        let snapshot = self.snapshot().await?;
        ok(pb::ListPoliciesResponse {
            policies: snapshot
                .config
                .policies
                .iter()
                .map(|p| snapshot.view(p))
                .collect(),
        })
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<pb::Policy> {
        let (policy, snapshot) = self.policy(&req.get_ref().name).await?;
        ok(snapshot.view(&policy))
    }

    async fn put_policy(&self, req: Request<pb::PutPolicyRequest>) -> Result<pb::Policy> {
        let snapshot = self.snapshot().await?;
        let policy = self.check_new_policy(&snapshot, &req.get_ref().json)?;
        let json = serde_json::to_string(&policy)
            .map_err(|e| AdminError::Internal(format!("cannot serialize the policy: {e}")))?;
        self.state
            .store
            .put_policy(&policy.name, &json)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(policy = %policy.name, "policy stored through the API");
        until_applied().await;
        let (policy, snapshot) = self.policy(&policy.name).await?;
        ok(snapshot.view(&policy))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<pb::DeletePolicyResponse> {
        let name = &req.get_ref().name;
        let (_, snapshot) = self.policy(name).await?;
        if snapshot.sources.get(name) != Some(&PolicySource::Api) {
            return Err(AdminError::FailedPrecondition(format!(
                "policy {name:?} is defined in the config file, which the API cannot change; remove it there (or disable it)"
            ))
            .into());
        }
        self.state
            .store
            .delete_policy(name)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(policy = %name, "policy deleted through the API");
        until_applied().await;
        ok(pb::DeletePolicyResponse {})
    }

    async fn set_policy_enabled(
        &self,
        req: Request<pb::SetPolicyEnabledRequest>,
    ) -> Result<pb::Policy> {
        let r = req.get_ref();
        self.policy(&r.name).await?;
        self.state
            .store
            .set_enabled(&r.name, r.enabled)
            .await
            .map_err(AdminError::from)?;
        until_applied().await;
        let (policy, snapshot) = self.policy(&r.name).await?;
        ok(snapshot.view(&policy))
    }
}

#[tonic::async_trait]
impl pb::registries_server::Registries for Admin {
    async fn list_registries(
        &self,
        _: Request<pb::ListRegistriesRequest>,
    ) -> Result<pb::ListRegistriesResponse> {
        let snapshot = self.snapshot().await?;
        ok(pb::ListRegistriesResponse {
            registries: snapshot
                .config
                .registries
                .iter()
                .map(|r| snapshot.registry_view(r))
                .collect(),
        })
    }

    async fn get_registry(&self, req: Request<pb::GetRegistryRequest>) -> Result<pb::Registry> {
        let snapshot = self.snapshot().await?;
        ok(snapshot.registry_view(snapshot.find_registry(&req.get_ref().name)?))
    }

    async fn put_registry(&self, req: Request<pb::PutRegistryRequest>) -> Result<pb::Registry> {
        let snapshot = self.snapshot().await?;
        let registry = self.check_new_registry(&snapshot, &req.get_ref().json)?;
        let json = serde_json::to_string(&registry)
            .map_err(|e| AdminError::Internal(format!("cannot serialize the registry: {e}")))?;
        self.state
            .store
            .put_registry(&registry.name, &json)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(registry = %registry.name, "registry stored through the API");
        until_applied().await;
        let snapshot = self.snapshot().await?;
        ok(snapshot.registry_view(snapshot.find_registry(&registry.name)?))
    }

    async fn delete_registry(
        &self,
        req: Request<pb::DeleteRegistryRequest>,
    ) -> Result<pb::DeleteRegistryResponse> {
        let name = &req.get_ref().name;
        let snapshot = self.snapshot().await?;
        snapshot.find_registry(name)?;
        if snapshot.registry_sources.get(name) != Some(&PolicySource::Api) {
            return Err(AdminError::FailedPrecondition(format!(
                "registry {name:?} is defined in the config file, which the API cannot change"
            ))
            .into());
        }
        let users: Vec<&str> = snapshot
            .config
            .policies
            .iter()
            .filter(|p| p.src_registry.name == *name || p.destinations().any(|d| d.name == *name))
            .map(|p| p.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(AdminError::FailedPrecondition(format!(
                "registry {name:?} is used by policies {}; delete or change them first",
                users.join(", ")
            ))
            .into());
        }
        self.state
            .store
            .delete_registry(name)
            .await
            .map_err(AdminError::from)?;
        until_applied().await;
        ok(pb::DeleteRegistryResponse {})
    }

    async fn ping_registry(
        &self,
        req: Request<pb::PingRegistryRequest>,
    ) -> Result<pb::PingRegistryResponse> {
        let name = &req.get_ref().name;
        // Checked before any request: the probe opens an upload session in this repository.
        let repository = match req.get_ref().repository.trim() {
            "" => "ferry-probe",
            r => r,
        };
        crate::policy::check_repository(repository).map_err(|e| AdminError::InvalidArgument {
            violations: vec![format!("repository: {e}")],
        })?;
        let snapshot = self.snapshot().await?;
        snapshot.find_registry(name)?;
        let client = snapshot
            .clients(&self.state)?
            .get("", name)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let started = Instant::now();
        let answer = client.ping().await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let info = match answer {
            Ok(info) => info,
            Err(e) => {
                return ok(pb::PingRegistryResponse {
                    // An HTTP answer (even 401/403) means the registry is there.
                    reachable: e.status().is_some()
                        || matches!(e, crate::oci::RegistryError::Auth { .. }),
                    authenticated: false,
                    latency_ms,
                    error: e.to_string(),
                    ..Default::default()
                });
            }
        };

        let mut notes = Vec::new();
        let (referrers_api, chunked_upload) =
            probe_capabilities(&client, repository, &mut notes).await;
        ok(pb::PingRegistryResponse {
            reachable: true,
            authenticated: true,
            api_version: info.api_version.unwrap_or_default(),
            auth_scheme: info.auth.unwrap_or_default(),
            referrers_api,
            latency_ms,
            error: String::new(),
            chunked_upload,
            notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::problems_under;
    use crate::config::Problem;

    fn problem(path: &str) -> Problem {
        Problem {
            path: path.into(),
            message: "bad".into(),
            hint: None,
        }
    }

    #[tokio::test]
    async fn a_ping_probe_never_creates_a_harbor_project() {
        let harbor = ferry_testkit::FakeRegistry::start(ferry_testkit::Behavior {
            harbor: Some(ferry_testkit::HarborSetup::default()),
            ..Default::default()
        })
        .await
        .unwrap();
        let cfg: crate::config::RegistryConfig = serde_json::from_value(serde_json::json!(
            {"name": "h", "url": harbor.url(), "insecure": true, "type": "harbor"}
        ))
        .unwrap();
        let client = crate::oci::RegistryClient::new(&cfg, Default::default()).unwrap();
        let mut notes = Vec::new();
        let (_, chunked) = super::probe_capabilities(&client, "team/ferry-probe", &mut notes).await;
        assert!(!chunked);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("Harbor project team does not exist")),
            "{notes:?}"
        );
        assert!(harbor.harbor_projects().is_empty());
        assert!(
            harbor.request_log().iter().all(|(m, _)| m != "POST"),
            "{:?}",
            harbor.request_log()
        );
    }

    #[test]
    fn problems_are_kept_only_under_the_entry_and_made_relative() {
        let all = vec![
            problem("policies[1].filters[0].value"),
            problem("policies[1]"),
            problem("policies[12].name"),
            problem("policies[0].name"),
            problem("registries[1].url"),
        ];
        assert_eq!(
            problems_under(all, "policies[1]"),
            ["filters[0].value: bad", "$: bad"]
        );
    }
}
