//! Checking `deploy/observability/` against the real tools: a real `prometheus` server scraping
//! Ferry's processes, `promtool` for rule files, and reading PromQL out of the Grafana dashboard.
//!
//! - [`Prometheus`]: Debian's `prometheus` on a free port with its TSDB in its own temp dir,
//!   scraping the given targets every second and loading the given rule files; queried through
//!   its HTTP API (metric names it holds, the rules it loaded).
//! - [`promtool`]: runs `promtool` and fails with its output; a missing `promtool` is a failure
//!   naming `deploy/local/setup.sh`, never a skip.
//! - [`dashboard_exprs`] and [`metric_names`]: the PromQL of every dashboard panel, and the metric
//!   names an expression reads.
//!
//! Invariants: the server is SIGKILLed when dropped and its temp dir removed (kept, with its log,
//! when the test panics); nothing is asserted before Prometheus answered `/-/ready`.
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::wait_for;

/// The directory of the dashboard, the rules and their tests.
pub fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

/// Runs `promtool args…` in `dir`; its stdout on success, else an error with everything it said.
pub fn promtool(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running promtool (install it with deploy/local/setup.sh)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "promtool {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    Ok(stdout)
}

/// Every PromQL expression of a Grafana dashboard, with the title of its panel; panels nested in
/// rows included.
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `expr` with Grafana's interval variables replaced by a duration, as Grafana does before
/// sending it to Prometheus.
pub fn grafana_to_promql(expr: &str) -> String {
    ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_string(), |e, var| e.replace(var, "5m"))
}

/// The names of Ferry's metrics (`ferry_…`) an expression reads, as they are stored (a
/// histogram's `_bucket`, `_sum`, `_count` included). String literals (label values) are skipped.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // Skip to the closing quote (a backslash escapes the next character).
                while let Some((_, d)) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                        end = i + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &expr[start..end];
                if word.starts_with("ferry_") {
                    names.insert(word.to_string());
                }
            }
            _ => {}
        }
    }
    names
}

/// A running `prometheus` server.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    dir: TempDir,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` (`(job, host:port)`) every second and evaluating
    /// `rule_files`; ready once `/-/ready` answers 200.
    pub async fn start(targets: &[(&str, String)], rule_files: &[PathBuf]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-prometheus-")
            .tempdir()
            .context("creating Prometheus's temp dir")?;
        let scrape_configs: Vec<Value> = targets
            .iter()
            .map(
                |(job, target)| json!({"job_name": job, "static_configs": [{"targets": [target]}]}),
            )
            .collect();
        let rule_files: Vec<String> = rule_files.iter().map(|p| p.display().to_string()).collect();
        // JSON is YAML: Prometheus reads this as its YAML config.
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": scrape_configs,
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .context("writing prometheus.yml")?;
        let http = reqwest::Client::new();
        let log_path = dir.path().join("prometheus.log");
        let mut last = None;
        // The port is free when picked; another process may take it before Prometheus binds it.
        for _ in 0..3 {
            let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let log = std::fs::File::create(&log_path).context("creating prometheus.log")?;
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting prometheus (install it with deploy/local/setup.sh)")?;
            let ready = format!("http://{addr}/-/ready");
            let waited = wait_for("prometheus /-/ready", Duration::from_secs(30), || {
                let request = http.get(&ready).send();
                async move { request.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await;
            match waited {
                Ok(_) => {
                    return Ok(Prometheus {
                        child,
                        addr,
                        http,
                        dir,
                    })
                }
                Err(e) => {
                    let _ = child.start_kill();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let in_use = log.contains("address already in use");
                    last = Some(e.context(format!("prometheus log:\n{log}")));
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("prometheus did not start")))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("prometheus.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the `data` of a `success` answer.
    pub async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/{path}", self.url());
        let body: Value = serde_json::from_slice(
            &self
                .http
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?
                .bytes()
                .await?,
        )
        .with_context(|| format!("GET {url}: not JSON"))?;
        anyhow::ensure!(body["status"] == "success", "GET {url}: {body}");
        Ok(body["data"].clone())
    }

    /// The value of the instant query `expr` (its first sample); `None` when it has no result.
    pub async fn query_value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let url = format!("{}/api/v1/query", self.url());
        let body: Value = serde_json::from_slice(
            &self
                .http
                .get(&url)
                .query(&[("query", expr)])
                .send()
                .await
                .with_context(|| format!("GET {url}?query={expr}"))?
                .bytes()
                .await?,
        )
        .with_context(|| format!("GET {url}?query={expr}: not JSON"))?;
        anyhow::ensure!(body["status"] == "success", "query {expr}: {body}");
        match body["data"]["result"][0]["value"][1].as_str() {
            Some(v) => Ok(Some(
                v.parse().with_context(|| format!("query {expr}: {v:?}"))?,
            )),
            None => Ok(None),
        }
    }

    /// The names of every metric Prometheus holds samples of.
    pub async fn metric_names(&self) -> anyhow::Result<BTreeSet<String>> {
        let data = self.api("label/__name__/values").await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    /// Every rule Prometheus loaded from its rule files: `(name, PromQL, health)`.
    pub async fn rules(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let data = self.api("rules").await?;
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let field = |k: &str| rule[k].as_str().unwrap_or_default().to_string();
                rules.push((field("name"), field("query"), field("health")));
            }
        }
        Ok(rules)
    }

    /// The health (`up`, `down`, `unknown`) of every scrape target, by job.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let data = self.api("targets").await?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "===== prometheus =====\n{}",
                crate::process::tail(&self.log(), 40)
            );
            self.dir.disable_cleanup(true);
            eprintln!(
                "(Prometheus's config and log kept in {})",
                self.dir.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_ferrys_identifiers_outside_string_literals() {
        let names = metric_names(
            r#"sum by (registry) (rate(ferry_registry_requests_total{code=~"ferry_not_a_metric|5.."}[5m])) / on() ferry_x:y_bucket"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["ferry_registry_requests_total", "ferry_x:y_bucket"]
        );
    }

    #[test]
    fn grafana_intervals_become_durations() {
        assert_eq!(
            grafana_to_promql("rate(ferry_bytes_total[$__rate_interval])"),
            "rate(ferry_bytes_total[5m])"
        );
    }
}
