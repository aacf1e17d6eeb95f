//! In-process [`History`] for `ferry serve` without `--redis` (and tests). Nothing survives the
//! process. The lock is a `std::sync::Mutex` held only for in-memory work, never across an `.await`.
//!
//! # Invariants
//! - `order` holds exactly the `(started_at_ms, id)` of every execution in `executions`.
//! - Counts are computed from the stored tasks on read, so they cannot drift from them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{count_states, Execution, ExecutionQuery, History, Retention, Task, WorkerInfo};
use crate::clock::{duration_ms, now_ms};
use crate::store::StoreError;

/// The in-process history. Cheap to share behind an `Arc`.
pub struct MemoryHistory {
    retention: Retention,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    executions: HashMap<String, (Execution, BTreeMap<String, Task>)>,
    /// `(started_at_ms, id)`, oldest first.
    order: BTreeSet<(i64, String)>,
    /// Worker id → (info, expiry).
    workers: BTreeMap<String, (WorkerInfo, Instant)>,
}

impl State {
    fn remove(&mut self, key: &(i64, String)) {
        self.order.remove(key);
        self.executions.remove(&key.1);
    }

    /// Drops executions beyond the retention limits, oldest first.
    fn trim(&mut self, retention: &Retention, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(duration_ms(retention.max_age));
        while let Some(first) = self.order.first().cloned() {
            if first.0 >= cutoff && self.order.len() <= retention.max_executions {
                break;
            }
            self.remove(&first);
        }
    }

    fn view(&self, id: &str) -> Option<Execution> {
        let (e, tasks) = self.executions.get(id)?;
        let mut e = e.clone();
        e.counts = count_states(tasks.values());
        Some(e)
    }
}

impl MemoryHistory {
    pub fn new(retention: Retention) -> MemoryHistory {
        MemoryHistory {
            retention,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing the whole history: keep serving.
        crate::locks::lock(&self.state)
    }
}

#[async_trait::async_trait]
impl History for MemoryHistory {
    async fn record(&self, execution: &Execution, tasks: &[Task]) -> Result<(), StoreError> {
        let mut st = self.state();
        let key = (execution.started_at_ms, execution.id.clone());
        let is_new = match st.executions.get_mut(&execution.id) {
            Some((old, stored)) => {
                let old_key = (old.started_at_ms, old.id.clone());
                *old = execution.clone();
                for t in tasks {
                    stored.insert(t.id.clone(), t.clone());
                }
                if old_key != key {
                    st.order.remove(&old_key);
                    st.order.insert(key);
                }
                false
            }
            None => {
                let stored = tasks.iter().map(|t| (t.id.clone(), t.clone())).collect();
                st.executions
                    .insert(execution.id.clone(), (execution.clone(), stored));
                st.order.insert(key);
                true
            }
        };
        if is_new {
            st.trim(&self.retention, now_ms());
        }
        Ok(())
    }

    async fn record_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError> {
        if let Some((_, stored)) = self.state().executions.get_mut(execution_id) {
            for t in tasks {
                stored.insert(t.id.clone(), t.clone());
            }
        }
        Ok(())
    }

    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        Ok(self.state().view(id))
    }

    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<Execution>, StoreError> {
        let st = self.state();
        let before = query.before_ms.unwrap_or(i64::MAX);
        Ok(st
            .order
            .iter()
            .rev()
            .filter(|(started, _)| *started < before)
            .filter_map(|(_, id)| st.view(id))
            .filter(|e| query.policy.as_ref().is_none_or(|p| &e.policy == p))
            .take(query.limit)
            .collect())
    }

    async fn tasks(&self, execution_id: &str, limit: usize) -> Result<Vec<Task>, StoreError> {
        Ok(self
            .state()
            .executions
            .get(execution_id)
            .map(|(_, tasks)| tasks.values().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        let expiry = Instant::now() + ttl.min(Duration::from_secs(365 * 24 * 3600));
        self.state()
            .workers
            .insert(worker.id.clone(), (worker.clone(), expiry));
        Ok(())
    }

    async fn deregister(&self, worker_id: &str) -> Result<(), StoreError> {
        self.state().workers.remove(worker_id);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let now = Instant::now();
        let mut st = self.state();
        st.workers.retain(|_, (_, expiry)| *expiry > now);
        Ok(st.workers.values().map(|(w, _)| w.clone()).collect())
    }
}
