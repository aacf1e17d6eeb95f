//! `deploy/observability/` holds what it promises (README "Observability"): the alert rules pass
//! `promtool check rules` and their unit tests (each alert fires on a bad series and not on a good
//! one), every PromQL expression of the Grafana dashboard parses, and a real `prometheus` scraping
//! a live `ferry-agent` and `ferry worker` during a replication holds every metric the rules and
//! the dashboard read — names taken from the files (the rules as Prometheus loaded them), never
//! from a list kept here.
//!
//! Needs `promtool` and `prometheus` on `PATH` (deploy/local/setup.sh installs them): without them
//! these tests fail, they do not skip.
use std::collections::BTreeSet;
use std::time::Duration;

use ferry_chaos_tests::prometheus::{
    dashboard_exprs, grafana_to_promql, metric_names, observability_dir, promtool, Prometheus,
};
use ferry_chaos_tests::{oci, wait_for, Region, RegionOptions, WorkerSpec};
use ferry_testkit::{skopeo, LayerSpec};
use serde_json::{json, Value};

const RULES: &str = "ferry-rules.yml";
const RULE_TESTS: &str = "ferry-rules.test.yml";
const DASHBOARD: &str = "ferry-dashboard.json";

fn dashboard() -> Value {
    let path = observability_dir().join(DASHBOARD);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Fails the test with the full error chain while the region is alive, so its `Drop` prints every
/// log (a returned `Err` would drop the region quietly first).
fn check(result: anyhow::Result<()>) {
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_every_alert_fires_only_on_its_bad_series() {
    let dir = observability_dir();
    let checked = promtool(&dir, &["check", "rules", RULES]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", RULE_TESTS]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert of the rules file has a unit test.
    let rules = std::fs::read_to_string(dir.join(RULES)).unwrap();
    let tests = std::fs::read_to_string(dir.join(RULE_TESTS)).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test in {RULE_TESTS}"
        );
    }
}

#[test]
fn every_dashboard_expression_is_valid_promql_reading_ferry_metrics() {
    let exprs = dashboard_exprs(&dashboard());
    assert!(exprs.len() >= 14, "{exprs:?}");
    for (title, expr) in &exprs {
        assert!(
            !metric_names(expr).is_empty(),
            "panel {title:?} reads no Ferry metric: {expr}"
        );
    }
    // promtool parses each expression as a recording rule's (JSON is YAML).
    let rules = json!({"groups": [{
        "name": "dashboard",
        "rules": exprs.iter().enumerate().map(|(i, (_, expr))| json!({
            "record": format!("dashboard:expr_{i}"),
            "expr": grafana_to_promql(expr),
        })).collect::<Vec<_>>(),
    }]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dashboard.rules.yml"),
        serde_json::to_vec_pretty(&rules).unwrap(),
    )
    .unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "dashboard.rules.yml"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scraping_a_live_agent_and_worker_holds_every_metric_the_rules_and_dashboard_read(
) {
    // The agent is region `east` of two, so it forwards (to `west`, whose endpoint is down: its
    // outbox depth is exported), and runs the safety net every 2 s (drift is exported).
    let token_dir = tempfile::tempdir().unwrap();
    let forward_token = token_dir.path().join("forward-token");
    std::fs::write(&forward_token, "observability-forward-token\n").unwrap();
    let options = RegionOptions {
        agent_args: vec![
            "--reconcile-interval".into(),
            "2".into(),
            "--region".into(),
            "east".into(),
            "--forward-token-file".into(),
            forward_token.display().to_string(),
        ],
        ..RegionOptions::default()
    }
    .config_field(
        "regions",
        json!([
            {"name": "east", "forward_url": "http://127.0.0.1:9"},
            {"name": "west", "forward_url": "http://127.0.0.1:9"},
        ]),
    );
    let region = Region::start(options).await.expect("starting the region");
    check(scrape_during_replication(&region).await);
}

async fn scrape_during_replication(region: &Region) -> anyhow::Result<()> {
    let worker = region.start_worker(WorkerSpec::default()).await?;
    let host = |url: String| url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(
        &[
            ("ferry-agent", host(region.agent.url())),
            ("ferry-worker", host(worker.url())),
        ],
        &[observability_dir().join(RULES)],
    )
    .await?;

    let fixtures = tempfile::tempdir()?;
    let image = oci::image(
        &fixtures.path().join("app"),
        &[LayerSpec {
            seed: 6001,
            size: 256 * 1024,
        }],
    )?;
    skopeo::push_layout(&image.layout, "img", &region.a.host(), "obs/app:v1").await?;
    region
        .wait_on_b(
            "obs/app",
            "v1",
            &image.manifest.digest,
            Duration::from_secs(60),
        )
        .await?;

    // The names the rules read, as Prometheus itself loaded and parsed them.
    let rules = prometheus.rules().await?;
    anyhow::ensure!(!rules.is_empty(), "Prometheus loaded no rule from {RULES}");
    let mut wanted = BTreeSet::new();
    for (name, query, _) in &rules {
        let names = metric_names(query);
        anyhow::ensure!(
            !names.is_empty(),
            "rule {name} reads no Ferry metric: {query}"
        );
        wanted.extend(names);
    }
    for (_, expr) in dashboard_exprs(&dashboard()) {
        wanted.extend(metric_names(&expr));
    }

    let missing = std::sync::Mutex::new(wanted.clone());
    let waited = wait_for(
        "Prometheus to hold every metric the rules and dashboard read",
        Duration::from_secs(60),
        || async {
            let Ok(held) = prometheus.metric_names().await else {
                return false;
            };
            let now: BTreeSet<String> = wanted.difference(&held).cloned().collect();
            let done = now.is_empty();
            *missing.lock().unwrap() = now;
            done
        },
    )
    .await;
    if let Err(e) = waited {
        let missing = missing.lock().unwrap().clone();
        let targets = prometheus.targets().await.unwrap_or_default();
        anyhow::bail!("{e}: missing {missing:?}; targets {targets:?}");
    }
    eprintln!(
        "Prometheus holds all {} metrics read by {} rules and the dashboard: {wanted:?}",
        wanted.len(),
        rules.len()
    );

    // Both processes were scraped, every rule evaluates, and the replication's requests were
    // counted: the copy to b answered 201s to the worker's PUTs.
    let targets = prometheus.targets().await?;
    for job in ["ferry-agent", "ferry-worker"] {
        anyhow::ensure!(
            targets.iter().any(|(j, health)| j == job && health == "up"),
            "{job} is not up in Prometheus: {targets:?}"
        );
    }
    wait_for(
        "every rule to evaluate healthy",
        Duration::from_secs(30),
        || {
            let rules = prometheus.rules();
            async move {
                rules
                    .await
                    .is_ok_and(|r| r.iter().all(|(_, _, h)| h == "ok"))
            }
        },
    )
    .await?;
    let puts = r#"sum(ferry_registry_requests_total{job="ferry-worker",registry="b",method="PUT",code="201"})"#;
    wait_for(
        "the worker's blob and manifest PUTs to b counted in Prometheus",
        Duration::from_secs(30),
        || {
            let value = prometheus.query_value(puts);
            async move { value.await.ok().flatten().is_some_and(|v| v >= 2.0) }
        },
    )
    .await?;
    Ok(())
}
