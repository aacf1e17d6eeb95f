//! [`History`] in the region's Redis/Valkey, next to the queue (same connection and prefix).
//!
//! # Layout (`{p}` is the store's key prefix)
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:execs` | sorted set | execution ids, score `started_at_ms` |
//! | `{p}:execs:policy:{policy}` | sorted set | the same, per policy (listing by policy) |
//! | `{p}:exec:{id}` | hash | `doc` (JSON of [`Execution`] without counts), `policy`, `n:{state}` task counters |
//! | `{p}:exec:{id}:tasks` | hash | task id → JSON of [`Task`] |
//! | `{p}:exec:{id}:states` | hash | task id → state name (what the counters count) |
//! | `{p}:workers` | hash | worker id → JSON `{"info": WorkerInfo, "expires_at_ms": …}` |
//!
//! [`History::record`] is one Lua script: the execution, its tasks and the counters change
//! together, and a task's counter moves only when its state changes, so concurrent recorders of
//! one execution keep the counts exact. Retention is applied by the same script when it adds a new
//! execution (oldest first, at most 1 000 removals per call so a call stays short). Like the queue
//! scripts it computes key names, so it needs a standalone Redis/Valkey, not Redis Cluster.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

use super::{Execution, ExecutionQuery, History, Retention, Task, TaskState, WorkerInfo};
use crate::clock::{duration_ms, now_ms};
use crate::store::redis::{bounded, RedisStore};
use crate::store::StoreError;

/// KEYS: execs, execs by policy, exec, tasks, states. ARGV: id, score, doc, policy, max count,
/// cutoff ms, prefix, then (task id, task JSON, state) triples. An empty doc records tasks only,
/// and only when the execution exists (returns 0 otherwise).
const RECORD: &str = r#"
local id = ARGV[1]
local is_new = 0
if ARGV[3] == '' then
  if redis.call('HEXISTS', KEYS[3], 'doc') == 0 then return 0 end
else
  is_new = redis.call('ZADD', KEYS[1], ARGV[2], id)
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  redis.call('HSET', KEYS[3], 'doc', ARGV[3], 'policy', ARGV[4])
end
for i = 8, #ARGV, 3 do
  local tid, json, st = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[5], tid)
  redis.call('HSET', KEYS[4], tid, json)
  if old ~= st then
    redis.call('HSET', KEYS[5], tid, st)
    redis.call('HINCRBY', KEYS[3], 'n:' .. st, 1)
    if old then redis.call('HINCRBY', KEYS[3], 'n:' .. old, -1) end
  end
end
if is_new == 1 then
  local victims = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6], 'LIMIT', 0, 1000)
  local excess = redis.call('ZCARD', KEYS[1]) - #victims - tonumber(ARGV[5])
  if excess > 0 then
    local more = redis.call('ZRANGE', KEYS[1], #victims, #victims + math.min(excess, 1000) - 1)
    for _, v in ipairs(more) do table.insert(victims, v) end
  end
  for _, v in ipairs(victims) do
    local ek = ARGV[7] .. ':exec:' .. v
    local pol = redis.call('HGET', ek, 'policy')
    if pol then redis.call('ZREM', ARGV[7] .. ':execs:policy:' .. pol, v) end
    redis.call('DEL', ek, ek .. ':tasks', ek .. ':states')
    redis.call('ZREM', KEYS[1], v)
  end
end
return 1
"#;

/// KEYS: workers. ARGV: (worker id, the expired entry read) pairs; deletes an entry only if it is
/// still that expired one (a fresh heartbeat since the read wins).
const PRUNE_WORKERS: &str = r#"
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"#;

static RECORD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD));
static PRUNE_WORKERS_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PRUNE_WORKERS));

/// A worker entry in `{p}:workers`.
#[derive(Serialize, Deserialize)]
struct WorkerEntry {
    info: WorkerInfo,
    expires_at_ms: i64,
}

/// History in Redis/Valkey. Cheap to clone.
#[derive(Clone)]
pub struct RedisHistory {
    redis: RedisStore,
    retention: Retention,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl RedisHistory {
    /// History on `redis` (the region's shared connection and key prefix).
    pub fn new(redis: &impl AsRef<RedisStore>, retention: Retention) -> RedisHistory {
        RedisHistory {
            redis: redis.as_ref().clone(),
            retention,
        }
    }

    fn exec_key(&self, id: &str) -> String {
        self.redis.key(&format!("exec:{id}"))
    }

    fn workers_key(&self) -> String {
        self.redis.key("workers")
    }

    /// Runs the RECORD script; `execution` `None` records tasks of an existing execution only.
    async fn run_record(
        &self,
        id: &str,
        execution: Option<(&Execution, &str)>,
        tasks: &[Task],
    ) -> Result<(), StoreError> {
        let (policy, started, doc) = execution
            .map(|(e, doc)| (e.policy.as_str(), e.started_at_ms, doc))
            .unwrap_or(("", 0, ""));
        let ek = self.exec_key(id);
        let mut inv = RECORD_SCRIPT.prepare_invoke();
        inv.key(self.redis.key("execs"))
            .key(self.redis.key(&format!("execs:policy:{policy}")))
            .key(&ek)
            .key(format!("{ek}:tasks"))
            .key(format!("{ek}:states"))
            .arg(id)
            .arg(started)
            .arg(doc)
            .arg(policy)
            .arg(self.retention.max_executions)
            .arg(now_ms().saturating_sub(duration_ms(self.retention.max_age)))
            .arg(self.redis.prefix());
        for t in tasks {
            inv.arg(&t.id)
                .arg(serde_json::to_string(t).map_err(|e| corrupt("task", e))?)
                .arg(t.state.as_str());
        }
        let mut con = self.redis.connection();
        bounded(inv.invoke_async::<i64>(&mut con)).await?;
        Ok(())
    }

    /// An execution from its hash (`doc` plus `n:{state}` counters); `None` when it has no doc
    /// (trimmed meanwhile).
    fn parse_exec(fields: BTreeMap<String, Vec<u8>>) -> Result<Option<Execution>, StoreError> {
        let Some(doc) = fields.get("doc") else {
            return Ok(None);
        };
        let mut e: Execution =
            serde_json::from_slice(doc).map_err(|err| corrupt("execution record", err))?;
        e.counts.clear();
        for (k, v) in &fields {
            let Some(state) = k.strip_prefix("n:").and_then(TaskState::parse) else {
                continue;
            };
            let n: i64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("execution task counter", k))?;
            if n > 0 {
                e.counts.insert(state, n as u64);
            }
        }
        Ok(Some(e))
    }
}

#[async_trait::async_trait]
impl History for RedisHistory {
    async fn record(&self, execution: &Execution, tasks: &[Task]) -> Result<(), StoreError> {
        let mut doc = execution.clone();
        doc.counts.clear();
        let doc = serde_json::to_string(&doc).map_err(|e| corrupt("execution", e))?;
        self.run_record(&execution.id, Some((execution, &doc)), tasks)
            .await
    }

    async fn record_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError> {
        self.run_record(execution_id, None, tasks).await
    }

    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        let mut con = self.redis.connection();
        let fields: BTreeMap<String, Vec<u8>> = bounded(
            redis::cmd("HGETALL")
                .arg(self.exec_key(id))
                .query_async(&mut con),
        )
        .await?;
        RedisHistory::parse_exec(fields)
    }
    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<Execution>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let index = match &query.policy {
            Some(p) => self.redis.key(&format!("execs:policy:{p}")),
            None => self.redis.key("execs"),
        };
        let max = match query.before_ms {
            Some(b) => format!("({b}"),
            None => "+inf".to_string(),
        };
        let mut con = self.redis.connection();
        let ids: Vec<String> = bounded(
            redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg(max)
                .arg("-inf")
                .arg("LIMIT")
                .arg(0)
                .arg(query.limit)
                .query_async(&mut con),
        )
        .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.exec_key(id));
        }
        let all: Vec<BTreeMap<String, Vec<u8>>> = bounded(pipe.query_async(&mut con)).await?;
        let mut out = Vec::with_capacity(all.len());
        for fields in all {
            if let Some(e) = RedisHistory::parse_exec(fields)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn tasks(&self, execution_id: &str, limit: usize) -> Result<Vec<Task>, StoreError> {
        let mut con = self.redis.connection();
        let all: BTreeMap<String, Vec<u8>> = bounded(
            redis::cmd("HGETALL")
                .arg(format!("{}:tasks", self.exec_key(execution_id)))
                .query_async(&mut con),
        )
        .await?;
        all.values()
            .take(limit)
            .map(|raw| serde_json::from_slice(raw).map_err(|e| corrupt("task record", e)))
            .collect()
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        let entry = WorkerEntry {
            info: worker.clone(),
            expires_at_ms: now_ms().saturating_add(duration_ms(ttl)),
        };
        let json = serde_json::to_string(&entry).map_err(|e| corrupt("worker", e))?;
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("HSET")
                .arg(self.workers_key())
                .arg(&worker.id)
                .arg(json)
                .query_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn deregister(&self, worker_id: &str) -> Result<(), StoreError> {
        let mut con = self.redis.connection();
        bounded(
            redis::cmd("HDEL")
                .arg(self.workers_key())
                .arg(worker_id)
                .query_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let mut con = self.redis.connection();
        let all: BTreeMap<String, Vec<u8>> = bounded(
            redis::cmd("HGETALL")
                .arg(self.workers_key())
                .query_async(&mut con),
        )
        .await?;
        let now = now_ms();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, raw) in all {
            match serde_json::from_slice::<WorkerEntry>(&raw) {
                Ok(e) if e.expires_at_ms > now => live.push(e.info),
                Ok(_) => gone.push((id, raw)),
                Err(err) => {
                    tracing::warn!(worker = %id, error = %err, "dropping an unreadable worker record");
                    gone.push((id, raw));
                }
            }
        }
        if !gone.is_empty() {
            let mut inv = PRUNE_WORKERS_SCRIPT.prepare_invoke();
            inv.key(self.workers_key());
            for (id, raw) in &gone {
                inv.arg(id).arg(raw.as_slice());
            }
            let r = bounded(inv.invoke_async::<i64>(&mut con)).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot prune expired worker records");
            }
        }
        Ok(live)
    }
}
