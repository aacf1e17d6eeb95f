//! Finding and following the primary of a Redis/Valkey Sentinel setup: the region's state then
//! survives losing its server, as long as Sentinel promotes a replica.
//!
//! A `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]` URL names the
//! sentinels (`HOST:PORT`, default port 26379) and the name they monitor the primary under; the
//! userinfo and database are for the primary. Ferry asks the sentinels, one after the other,
//! `SENTINEL GET-MASTER-ADDR-BY-NAME MASTER` ([`Sentinels::primary`]) when it connects and then
//! every [`FOLLOW_EVERY`], over connections it keeps open ([`SentinelConnections`]; one that fails
//! is opened again); when the answer changes (a failover), the store's connection is replaced
//! by one to the new primary (`store::redis::RedisStore`). Commands in flight on the old
//! connection fail as `Unavailable`, as during any outage: agents answer 503 (the registry
//! re-sends), workers retry.
//!
//! Invariants: only the sentinels' answer moves the store to another server (never a guess from
//! a connection error); sentinels are asked without `AUTH` and only `SENTINEL
//! GET-MASTER-ADDR-BY-NAME` (a sentinel that requires a password answers `NOAUTH`, reported as
//! such); a URL's password never shows in messages.
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::store::StoreError;

/// How often the sentinels are asked where the primary is.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// The sentinels' default port.
const DEFAULT_PORT: u16 = 26379;
/// One question to one sentinel.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The sentinels of a `redis+sentinel://` URL and what the primary needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of every sentinel, in the URL's order.
    pub nodes: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// Database, user and password for the primary.
    pub primary: RedisConnectionInfoParts,
}

/// The parts of [`RedisConnectionInfo`] a URL sets (that type has no `PartialEq`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RedisConnectionInfoParts {
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Why a `redis+sentinel://` URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid Sentinel URL: {0}; expected redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]")]
pub struct SentinelUrlError(String);

impl Sentinels {
    /// Whether `url` is a Sentinel URL (to be parsed with [`Sentinels::parse`]).
    pub fn is_sentinel_url(url: &str) -> bool {
        url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
    }

    /// Parses a `redis+sentinel://` URL (no I/O).
    pub fn parse(url: &str) -> Result<Sentinels, SentinelUrlError> {
        let err = |m: &str| SentinelUrlError(m.to_string());
        if url.starts_with("rediss+sentinel://") {
            return Err(err(
                "TLS through Sentinel (rediss+sentinel://) is not supported; use redis+sentinel:// on a trusted network, or one TLS server (rediss://)",
            ));
        }
        let rest = url
            .strip_prefix("redis+sentinel://")
            .ok_or_else(|| err("the scheme must be redis+sentinel://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let nodes = hosts
            .split(',')
            .map(|node| parse_node(node).map_err(|m| err(&m)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = segments
            .next()
            .ok_or_else(|| err("the path must name the monitored master (/MASTER)"))?;
        let master = percent_decode(master);
        let db = match segments.next() {
            None => 0,
            Some(db) => db
                .parse::<i64>()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or_else(|| err(&format!("database {db:?} is not a number")))?,
        };
        if segments.next().is_some() {
            return Err(err("the path has more than /MASTER/DB"));
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let some = |s: &str| (!s.is_empty()).then(|| percent_decode(s));
                (some(user), some(pass))
            }
        };
        Ok(Sentinels {
            nodes,
            master,
            primary: RedisConnectionInfoParts {
                db,
                username,
                password,
            },
        })
    }

    /// Where the sentinels say the primary is now: the first sentinel that answers with an
    /// address decides. `open` keeps the connections to the sentinels between calls (the store
    /// asks every [`FOLLOW_EVERY`]); one that fails is dropped and opened again next time.
    pub async fn primary(
        &self,
        open: &mut SentinelConnections,
    ) -> Result<(String, u16), StoreError> {
        let mut problems = Vec::new();
        for (i, (host, port)) in self.nodes.iter().enumerate() {
            let asked = tokio::time::timeout(ASK_TIMEOUT, async {
                let con = match open.0.get_mut(&i) {
                    Some(con) => con,
                    None => open.0.entry(i).or_insert(connect(host, *port).await?),
                };
                ask(con, &self.master).await
            })
            .await;
            match asked {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => problems.push(format!(
                    "{host}:{port} does not monitor a master named {:?}",
                    self.master
                )),
                Ok(Err(e)) => {
                    open.0.remove(&i);
                    problems.push(format!("{host}:{port}: {e}"));
                }
                Err(_) => {
                    open.0.remove(&i);
                    problems.push(format!("{host}:{port}: no answer within {ASK_TIMEOUT:?}"));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "no sentinel named the primary of {:?}: {}",
            self.master,
            problems.join("; ")
        )))
    }

    /// The client of the primary at `addr`.
    pub fn client_for(&self, (host, port): &(String, u16)) -> Result<redis::Client, StoreError> {
        let info = (host.as_str(), *port)
            .into_connection_info()
            .map(|i: ConnectionInfo| {
                i.set_addr(ConnectionAddr::Tcp(host.clone(), *port))
                    .set_redis_settings(self.primary.to_info())
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        redis::Client::open(info).map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

impl RedisConnectionInfoParts {
    fn to_info(&self) -> RedisConnectionInfo {
        let mut info = RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            info = info.set_username(user);
        }
        if let Some(password) = &self.password {
            info = info.set_password(password);
        }
        info
    }
}

/// `host[:port]`, or `[v6]:port`.
fn parse_node(node: &str) -> Result<(String, u16), String> {
    if node.is_empty() {
        return Err("an empty sentinel address".into());
    }
    let (host, port) = match node.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("sentinel {node:?}: port {port:?} is not a port"))?,
        ),
        _ => (node, DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("sentinel {node:?}: not a host"));
    }
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| s.to_string(), |(_, v)| v.into_owned())
}

/// Open connections to the sentinels, by their index in [`Sentinels::nodes`].
#[derive(Default)]
pub struct SentinelConnections(std::collections::HashMap<usize, MultiplexedConnection>);

/// A connection to the sentinel at `host:port`.
async fn connect(host: &str, port: u16) -> Result<MultiplexedConnection, String> {
    let info = (host, port)
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())
}

/// One `SENTINEL GET-MASTER-ADDR-BY-NAME` to one sentinel: `None` when it monitors no such master.
async fn ask(
    con: &mut MultiplexedConnection,
    master: &str,
) -> Result<Option<(String, u16)>, String> {
    let answer: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    answer
        .map(|(host, port)| {
            port.parse::<u16>()
                .map(|port| (host, port))
                .map_err(|_| format!("answered a port that is not one: {port:?}"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_primary_credentials() {
        let s = Sentinels::parse(
            "redis+sentinel://ferry:s%40cret@10.0.0.1:26379,sentinel-b,[::1]:26380/ferry-main/2",
        )
        .unwrap();
        assert_eq!(
            s.nodes,
            vec![
                ("10.0.0.1".to_string(), 26379),
                ("sentinel-b".to_string(), DEFAULT_PORT),
                ("::1".to_string(), 26380)
            ]
        );
        assert_eq!(s.master, "ferry-main");
        assert_eq!(
            s.primary,
            RedisConnectionInfoParts {
                db: 2,
                username: Some("ferry".into()),
                password: Some("s@cret".into()),
            }
        );
        let bare = Sentinels::parse("redis+sentinel://127.0.0.1/m").unwrap();
        assert_eq!(bare.primary, RedisConnectionInfoParts::default());
    }

    #[test]
    fn unusable_sentinel_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis+sentinel://127.0.0.1:26379", "/MASTER"),
            ("redis+sentinel://127.0.0.1:26379/", "/MASTER"),
            ("redis+sentinel://127.0.0.1:notaport/m", "is not a port"),
            ("redis+sentinel://a,,b/m", "empty sentinel"),
            ("redis+sentinel://a/m/x", "not a number"),
            ("redis+sentinel://a/m/1/2", "more than"),
            ("rediss+sentinel://a/m", "not supported"),
        ] {
            let e = Sentinels::parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(e.contains("expected redis+sentinel://"), "{e}");
        }
    }

    #[test]
    fn only_sentinel_schemes_are_sentinel_urls() {
        assert!(Sentinels::is_sentinel_url("redis+sentinel://a/m"));
        assert!(!Sentinels::is_sentinel_url("redis://a:6379"));
    }
}
