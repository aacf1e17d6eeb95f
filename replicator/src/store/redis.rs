//! The Redis/Valkey behind the store: which server ([`RedisTarget`]: URL and how to trust it),
//! one shared connection with the key prefix of the region ([`RedisStore`]), the bound on every
//! operation ([`bounded`]) and connecting while the server may still be starting
//! ([`connect_waiting`]).
//!
//! Invariants: every Redis-backed part of a process (queue, history, pauses, policies, tag
//! ledger, outbox) talks through one [`RedisStore`], so one reconnecting connection serves them
//! all; no operation waits longer than [`OP_TIMEOUT`] (then [`StoreError::Unavailable`]); no
//! message, `Debug` output or error shows a password ([`redact_url`]).
//!
//! # Reaching the server
//! A [`RedisTarget`] is the URL plus how to trust the server: `redis://` is plaintext,
//! `rediss://` is TLS (rustls with the `ring` provider), verified against the Mozilla roots
//! (`webpki-roots`, as for registries) or, when a CA is given, against that CA only. A password
//! travels in the URL's userinfo (`rediss://:PASSWORD@host:6380/0`, or `USER:PASSWORD@` with ACLs)
//! and is sent with `AUTH` after the handshake; the target never shows it.
//!
//! Connections go through [`ConnectionManager`], which reconnects in the background after a
//! failure; clones of a [`RedisStore`] share it. With a `redis+sentinel://` URL the store connects
//! to the primary the sentinels name and follows a failover ([`crate::store::sentinel`]).

use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};

use crate::store::sentinel::{SentinelConnections, Sentinels, FOLLOW_EVERY};
use crate::store::StoreError;

/// Upper bound of one store operation, reconnect included; beyond it the caller gets
/// [`StoreError::Unavailable`].
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// One TCP connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect attempts per failure (each after a jittered delay of at most `RECONNECT_MAX_DELAY`).
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A Redis/Valkey server and how to trust it: a client built from a `redis://` or `rediss://` URL
/// and, for `rediss://`, optionally the CA (PEM) that must have signed the server's certificate
/// instead of the public roots. Its `Debug` and [`RedisTarget::redacted`] hide the password.
#[derive(Clone)]
pub struct RedisTarget {
    server: Server,
    /// The URL without its password, for messages.
    redacted: String,
    /// Replicas that must confirm an acknowledged write (`--redis-wait-replicas`); 0: none.
    wait_replicas: u32,
}

/// One server, or the primary the sentinels name.
#[derive(Clone)]
enum Server {
    Direct(redis::Client),
    Sentinel(Sentinels),
}

impl RedisTarget {
    /// Checks `url` (scheme, host, port, database; or a `redis+sentinel://` URL, see
    /// [`crate::store::sentinel`]) without connecting.
    pub fn new(url: &str) -> Result<RedisTarget, RedisError> {
        let server = if Sentinels::is_sentinel_url(url) {
            Server::Sentinel(Sentinels::parse(url).map_err(|e| {
                RedisError::from((ErrorKind::InvalidClientConfig, "invalid URL", e.to_string()))
            })?)
        } else {
            Server::Direct(redis::Client::open(url)?)
        };
        Ok(RedisTarget {
            server,
            redacted: redact_url(url),
            wait_replicas: 0,
        })
    }

    /// Like [`RedisTarget::new`] for a `rediss://` URL whose server certificate is signed by the
    /// CA certificate(s) in `ca_pem` (PEM); the public roots are then not trusted.
    pub fn with_ca(url: &str, ca_pem: Vec<u8>) -> Result<RedisTarget, RedisError> {
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem),
        };
        Ok(RedisTarget {
            server: Server::Direct(redis::Client::build_with_tls(url, certificates)?),
            redacted: redact_url(url),
            wait_replicas: 0,
        })
    }

    /// Writes that acknowledge an event to its sender (a job enqueued, an outbox entry) count
    /// only once `replicas` replicas confirmed them (`WAIT`, see [`RedisStore::confirm_replicated`]).
    pub fn with_wait_replicas(mut self, replicas: u32) -> RedisTarget {
        self.wait_replicas = replicas;
        self
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTarget({})", self.redacted)
    }
}

/// One connection to the region's Redis/Valkey and the key prefix all of its state lives under
/// (`{p}` in the key layouts). Clones share the connection; behind Sentinel, the connection is
/// replaced when the sentinels name another primary.
#[derive(Clone)]
pub struct RedisStore {
    con: Arc<RwLock<ConnectionManager>>,
    prefix: String,
    /// See [`RedisTarget::with_wait_replicas`].
    wait_replicas: u32,
}

impl AsRef<RedisStore> for RedisStore {
    fn as_ref(&self) -> &RedisStore {
        self
    }
}

impl RedisStore {
    /// Connects to `url` (failing with `Unavailable` if the server does not answer within a few
    /// seconds).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let target = RedisTarget::new(url).map_err(unavailable)?;
        RedisStore::connect_to(&target, prefix).await
    }

    /// [`RedisStore::connect`] to a [`RedisTarget`] (TLS with a private CA, for instance).
    pub async fn connect_to(target: &RedisTarget, prefix: &str) -> Result<RedisStore, StoreError> {
        let (con, sentinels) = match &target.server {
            Server::Direct(client) => (manage(client.clone()).await?, None),
            Server::Sentinel(sentinels) => {
                let primary = sentinels
                    .primary(&mut SentinelConnections::default())
                    .await?;
                let con = manage(sentinels.client_for(&primary)?).await?;
                tracing::info!(master = %sentinels.master, primary = %format!("{}:{}", primary.0, primary.1), "queue server: the primary the sentinels name");
                (con, Some((sentinels.clone(), primary)))
            }
        };
        let store = RedisStore {
            con: Arc::new(RwLock::new(con)),
            prefix: prefix.to_owned(),
            wait_replicas: target.wait_replicas,
        };
        if let Some((sentinels, primary)) = sentinels {
            tokio::spawn(follow_primary(
                Arc::downgrade(&store.con),
                sentinels,
                primary,
            ));
        }
        Ok(store)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The shared connection (cheap to clone; commands on clones are multiplexed).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.con.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// With `--redis-wait-replicas N`: `WAIT N` on `con` after a write that acknowledges an
    /// event (`what` names it), so that the event survives the primary's death once a replica is
    /// promoted. Fewer confirmations within [`REPLICA_WAIT`] make the write `Unavailable`: the
    /// caller refuses the event (503) and its sender re-sends it, collapsing into the job already
    /// written. `WAIT` holds the shared connection while it waits (a healthy replica confirms in
    /// well under a millisecond on a LAN).
    pub(crate) async fn confirm_replicated(
        &self,
        con: &mut ConnectionManager,
        what: &str,
    ) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let confirmed: i64 = bounded(
            redis::cmd("WAIT")
                .arg(self.wait_replicas)
                .arg(crate::clock::duration_ms(REPLICA_WAIT))
                .query_async(con),
        )
        .await?;
        if confirmed < i64::from(self.wait_replicas) {
            return Err(StoreError::Unavailable(format!(
                "{what}: {confirmed} of the {} replica(s) --redis-wait-replicas asks for confirmed it within {REPLICA_WAIT:?}; refused so that its sender sends it again",
                self.wait_replicas
            )));
        }
        Ok(())
    }
}

/// How long a write waits for its replicas (`WAIT`'s timeout), well inside [`OP_TIMEOUT`].
pub const REPLICA_WAIT: Duration = Duration::from_millis(1000);

/// A reconnecting connection to `client`'s server.
async fn manage(client: redis::Client) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY);
    bounded(ConnectionManager::new_with_config(client, config)).await
}

/// Asks the sentinels where the primary is every [`FOLLOW_EVERY`] and moves `con` to a new one
/// (see [`crate::store::sentinel`]); ends when the last clone of the store is dropped.
async fn follow_primary(
    con: Weak<RwLock<ConnectionManager>>,
    sentinels: Sentinels,
    mut primary: (String, u16),
) {
    let mut open = SentinelConnections::default();
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let Some(current) = con.upgrade() else {
            return;
        };
        let named = match sentinels.primary(&mut open).await {
            Ok(named) if named != primary => named,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the sentinels where the queue's primary is");
                continue;
            }
        };
        let client = match sentinels.client_for(&named) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the primary the sentinels name");
                continue;
            }
        };
        match manage(client).await {
            Ok(new) => {
                *current.write().unwrap_or_else(|p| p.into_inner()) = new;
                tracing::warn!(
                    master = %sentinels.master,
                    from = %format!("{}:{}", primary.0, primary.1),
                    to = %format!("{}:{}", named.0, named.1),
                    "queue server failover: now using the primary the sentinels name"
                );
                primary = named;
            }
            Err(e) => {
                tracing::warn!(error = %e, primary = %format!("{}:{}", named.0, named.1), "cannot reach the new primary yet");
            }
        }
    }
}

/// Why the queue could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The cause is part of the message (not a `source`), so the hint follows it.
    #[error("cannot reach the queue at {url} within {seconds} s: {cause}{hint}")]
    GaveUp {
        url: String,
        seconds: u64,
        cause: StoreError,
        /// What to do about it, when the error says (empty otherwise).
        hint: &'static str,
    },
    #[error("interrupted while connecting to the queue")]
    Interrupted,
}

/// Runs `open` (connect with [`RedisStore::connect_to`] and prepare what the caller needs, such
/// as the queue's consumer groups) again every `retry_every` while Redis/Valkey is not up yet (it
/// may start after Ferry), for at most `give_up_after`; `stop` (the shutdown signal) ends the wait.
pub async fn connect_waiting<T, F, Fut>(
    target: &RedisTarget,
    give_up_after: Duration,
    retry_every: Duration,
    stop: impl Future<Output = ()>,
    mut open: F,
) -> Result<T, ConnectError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    tokio::pin!(stop);
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(e) if started.elapsed() < give_up_after => {
                tracing::warn!(error = %e, "queue not reachable yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(retry_every) => {}
                    () = &mut stop => return Err(ConnectError::Interrupted),
                }
            }
            Err(cause) => {
                let hint = if cause.to_string().contains("certificate") {
                    " (if a private CA signed the server's certificate, pass it with --redis-ca-file)"
                } else {
                    ""
                };
                return Err(ConnectError::GaveUp {
                    url: target.redacted().to_string(),
                    seconds: give_up_after.as_secs(),
                    cause,
                    hint,
                });
            }
        }
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Runs one Redis operation under [`OP_TIMEOUT`], mapping every failure to `Unavailable`.
pub async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from redis within {OP_TIMEOUT:?}"
        ))),
    }
}

/// A Redis URL without its password (userinfo, or the `pass` query parameter of
/// `redis+unix://`), for messages; any other URL comes back unchanged. A URL that does not parse
/// loses everything before its last `@` (where a password would be).
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return match url.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once("://").map_or("", |(s, _)| s);
                format!("{scheme}://***@{host}")
            }
            None => url.to_string(),
        };
    };
    let pass_in_query = u.query_pairs().any(|(k, _)| k == "pass");
    if u.password().is_none() && !pass_in_query {
        return url.to_string();
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if pass_in_query {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://ferry:s3cret@valkey:6380/0"),
            "rediss://ferry:***@valkey:6380/0"
        );
        assert_eq!(
            redact_url("redis+unix:///run/valkey.sock?db=1&pass=s3cret"),
            "redis+unix:///run/valkey.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn an_unparsable_url_loses_its_userinfo() {
        let redacted = redact_url("redis://:s3cret@valkey:notaport");
        assert_eq!(redacted, "redis://***@valkey:notaport");
    }
}
