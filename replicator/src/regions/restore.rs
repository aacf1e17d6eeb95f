//! Puts a user's push back when a copy of an older write overwrote it (bidirectional policies).
//!
//! The race: a worker copies the other side's older push of a tag; a user pushes the same tag
//! here between the copy's `HEAD` and its `PUT`, so the copy overwrites the newer push. When the
//! push's webhook is recorded before the copy settles, the worker puts the push back itself
//! ([`crate::regions::conflict::overtaken_by`]). When the webhook arrives *after* the copy was
//! recorded, only the agent can: recording the push hands it the write the push replaced in the
//! ledger, and when that is an older write of other content
//! ([`crate::regions::conflict::may_have_overwritten`]) and the tag holds exactly that write's
//! digest now, the push's manifest (still in the repository, by digest) goes back under the tag —
//! before the event is forwarded, so that the other region copies the push, not the copy.
//!
//! Invariants: the tag is written only when it holds the older recorded write's digest, and only
//! with the pushed digest's own bytes from the same registry (a push deleted since is left
//! alone); a failure is logged and counted but does not fail the webhook — a redelivery could not
//! redo the check, the ledger already holding the push — so an operator is told
//! (`ferry_overwritten_pushes_total{outcome="failed"}`, an error log naming the tag).
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::catalog::{Current, Reload};
use crate::config::Config;
use crate::event::Event;
use crate::labels::RegistryOutcome;
use crate::oci::{RegistryClient, RegistryError};
use crate::replicate::Registries;
use crate::store::ledger::TagWrite;

use super::conflict::may_have_overwritten;

/// `ferry_overwritten_pushes_total{outcome}`: the push was put back.
const RESTORED: &str = "restored";
/// `ferry_overwritten_pushes_total{outcome}`: it could not be (the error log says why).
const FAILED: &str = "failed";

/// What the check after recording a push found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// No older write of other content was recorded: nothing to look at.
    NotNeeded,
    /// The tag does not hold the older write (the push is there, or something newer is).
    Intact,
    /// The copy had overwritten the push; the push holds the tag again.
    PutBack { overwritten: TagWrite },
    /// The pushed manifest is gone from the repository (deleted since): nothing to put back.
    Gone,
}

/// The agent's check after recording a user's push of a bidirectional policy's tag.
pub struct PushRestorer {
    registries: Current<Registries>,
    outcomes: Family<RegistryOutcome, Counter>,
}

impl PushRestorer {
    /// With the region's registries (kept current through [`Reload`]); registers
    /// `ferry_overwritten_pushes_total` in `metrics`.
    pub fn new(registries: &Registries, metrics: &mut Registry) -> PushRestorer {
        let outcomes = Family::<RegistryOutcome, Counter>::default();
        metrics.register(
            "ferry_overwritten_pushes",
            "Users' pushes of a bidirectional tag found overwritten by a copy of an older write, by registry and outcome (restored: put back before the event went on; failed: could not be put back, see the error log)",
            outcomes.clone(),
        );
        let restorer = PushRestorer {
            registries: Current::new(registries.clone()),
            outcomes,
        };
        restorer.zeros(registries);
        restorer
    }

    /// Every registry's outcomes at zero, so that rates and alerts see zeros, not absent series.
    fn zeros(&self, registries: &Registries) {
        for registry in registries.names() {
            for outcome in [RESTORED, FAILED] {
                let _ = self.outcomes.get_or_create(&RegistryOutcome {
                    registry: registry.to_string(),
                    outcome: outcome.to_string(),
                });
            }
        }
    }

    /// After `pushed` (the push `event` announced) was recorded over `previous`: puts the push back
    /// if a copy of `previous` overwrote it. Never fails; see the module doc.
    pub async fn after_push(
        &self,
        event: &Event,
        tag: &str,
        pushed: &TagWrite,
        previous: Option<&TagWrite>,
    ) -> Restored {
        let Some(older) = may_have_overwritten(pushed, previous) else {
            return Restored::NotNeeded;
        };
        let registry = &event.registry;
        let Some(client) = self.registries.get().client(registry) else {
            tracing::warn!(
                registry,
                "no client for the registry of a recorded push; not checked"
            );
            return Restored::NotNeeded;
        };
        match put_back(&client, &event.repository, tag, pushed, older).await {
            Ok(restored) => {
                if let Restored::PutBack { overwritten } = &restored {
                    self.count(registry, RESTORED);
                    tracing::warn!(
                        registry,
                        repository = %event.repository,
                        tag,
                        pushed = %pushed,
                        overwritten = %overwritten,
                        "conflict: a copy of an older push overwrote this push; put it back"
                    );
                }
                restored
            }
            Err(error) => {
                self.count(registry, FAILED);
                tracing::error!(
                    registry,
                    repository = %event.repository,
                    tag,
                    pushed = %pushed,
                    overwritten = %older,
                    error = %error,
                    "cannot put back a push a copy of an older push may have overwritten; push the tag again"
                );
                Restored::NotNeeded
            }
        }
    }

    fn count(&self, registry: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&RegistryOutcome {
                registry: registry.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// Puts `pushed` back under `repository:tag` when the tag holds `older`'s digest.
async fn put_back(
    client: &RegistryClient,
    repository: &str,
    tag: &str,
    pushed: &TagWrite,
    older: &TagWrite,
) -> Result<Restored, RegistryError> {
    let current = client.head_digest(repository, tag).await?;
    if current.as_ref().map(|d| d.as_ref()) != Some(older.digest.as_str()) {
        return Ok(Restored::Intact);
    }
    let manifest = match client.get_manifest(repository, &pushed.digest).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(Restored::Gone),
        Err(e) => return Err(e),
    };
    client.put_manifest(repository, tag, &manifest).await?;
    Ok(Restored::PutBack {
        overwritten: older.clone(),
    })
}

impl Reload for PushRestorer {
    fn what(&self) -> &'static str {
        "put-back of overwritten pushes"
    }

    fn reload(&self, _: &Config, registries: &Registries) -> Result<(), String> {
        self.zeros(registries);
        self.registries.set(registries.clone());
        Ok(())
    }
}
