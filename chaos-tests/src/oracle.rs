//! The one oracle of the chaos runs: after the faults heal, what every registry holds is read
//! directly (catalog, tag lists and manifest `HEAD`s over plain HTTP; manifests and blobs fetched
//! and re-hashed) and compared with the workload's ledger of acknowledged ops and the policies —
//! never with what Ferry says it did.
//!
//! # What it checks
//! - **Sources keep what they acknowledged**: a region's own repositories (outside bidirectional
//!   policies) hold exactly the ledger's tags and digests — nothing lost, nothing written into them.
//! - **Nothing lost**: a one-way policy's destination holds exactly the source's covered tags, with
//!   the same digests (a missing or different tag is *lost*; one still there after its delete is
//!   *not deleted* — deletes follow the digest guard, and the source no longer holds the digest).
//! - **Bidirectional tags converge**: both sides hold the same covered tags, each with one digest,
//!   which is a digest the workload pushed under that tag; a tag no delete ever took is on both.
//! - **Nothing outside the policies touched**: a registry holds tags only in the repositories its
//!   region wrote or a policy writes into it.
//! - **No corrupt content**: every manifest (index children too) and blob a registry serves hashes
//!   to its digest.
//! - **Drained**: every region's queue has nothing waiting or running, and every outbox is empty.
//! - **Dead letters only for injected permanent faults**: each dead letter is the copy of an
//!   image the workload broke on purpose at its source (a layer deleted behind its manifest,
//!   [`crate::workload::Runner::push_broken`]), with a reason naming the repository; each broken
//!   image left one. Broken images are expected on no replica and are not re-hashed.
//!
//! Invariant: an absence or a "nothing more" is checked only after the positive checks converged
//! (polled until a generous deadline), and the drained check is polled too — never a sleep.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::mesh::Mesh;
use crate::oci::MANIFEST_ACCEPT;
use crate::workload::Acked;

/// How content flows between regions (one per policy of the scenario).
#[derive(Clone, Debug)]
pub enum Flow {
    /// `from`'s repositories under `prefix` are replicated to `to`.
    OneWay {
        from: String,
        to: String,
        prefix: String,
    },
    /// `x` and `y` replicate `prefix` both ways.
    Bidirectional {
        x: String,
        y: String,
        prefix: String,
    },
}

/// `(repo, tag)` → digest.
pub type Tags = BTreeMap<(String, String), String>;

/// What is wrong, by kind; empty when the oracle is satisfied.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// A source does not hold what it acknowledged.
    pub source: Vec<String>,
    /// A covered tag missing or different on a replica.
    pub lost: Vec<String>,
    /// A tag still on a replica after its digest was deleted at the source.
    pub not_deleted: Vec<String>,
    /// Bidirectional sides disagree, or hold a digest never pushed under that tag.
    pub diverged: Vec<String>,
    /// Tags in a repository no policy writes into that registry.
    pub outside: Vec<String>,
    /// Content that does not hash to its digest (or cannot be read).
    pub corrupt: Vec<String>,
    /// Queues not drained, outboxes not empty.
    pub not_drained: Vec<String>,
    /// Dead letters no injected permanent fault explains (or without a reason), and injected
    /// permanent faults that left no dead letter.
    pub dead_letters: Vec<String>,
    /// Not a failure: a replica tag left at an older digest the source still holds (untagged),
    /// after the source moved the tag and deleted the new digest before the replica saw the move.
    /// The digest guard forbids deleting a digest the source has, and the safety net only
    /// reports extra tags (`ferry_drift_tags`); see the README's chaos oracle section.
    pub kept_by_guard: Vec<String>,
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    fn all(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("source", &self.source),
            ("lost", &self.lost),
            ("not deleted", &self.not_deleted),
            ("diverged", &self.diverged),
            ("outside the policies", &self.outside),
            ("corrupt", &self.corrupt),
            ("not drained", &self.not_drained),
            ("dead letters", &self.dead_letters),
        ]
        .into_iter()
        .flat_map(|(kind, v)| v.iter().map(move |s| (kind, s)))
    }
}

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, s) in self.all().take(40) {
            writeln!(f, "  {kind}: {s}")?;
        }
        let n = self.all().count();
        if n > 40 {
            writeln!(f, "  … and {} more", n - 40)?;
        }
        Ok(())
    }
}

/// The oracle of one scenario: the regions' registries, what each region writes, the flows.
#[derive(Clone, Debug)]
pub struct Oracle {
    /// Region → registry host (`IP:PORT`, plain HTTP).
    pub hosts: BTreeMap<String, String>,
    /// Region → repositories its workload writes.
    pub writes: BTreeMap<String, Vec<String>>,
    pub flows: Vec<Flow>,
    http: reqwest::Client,
}

/// The outcome of [`Oracle::verify`].
#[derive(Clone, Debug)]
pub struct Verdict {
    pub findings: Findings,
    /// From the start of the wait until the registries matched (`None`: they never did).
    pub convergence: Option<Duration>,
    /// Manifests and blobs fetched and re-hashed.
    pub rehashed: u64,
}

impl Oracle {
    pub fn new(
        hosts: BTreeMap<String, String>,
        writes: BTreeMap<String, Vec<String>>,
        flows: Vec<Flow>,
    ) -> anyhow::Result<Oracle> {
        Ok(Oracle {
            hosts,
            writes,
            flows,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// Waits (up to `deadline`) until the registries match the ledger, then until the mesh has
    /// drained, then re-hashes everything; the findings left at the end.
    pub async fn verify(&self, mesh: &Mesh, acked: &Acked, deadline: Duration) -> Verdict {
        let started = Instant::now();
        let mut findings = Findings::default();
        let mut convergence = None;
        while started.elapsed() < deadline {
            findings = match self.state_findings(acked).await {
                Ok(f) => f,
                Err(e) => Findings {
                    lost: vec![format!("reading the registries failed: {e:#}")],
                    ..Findings::default()
                },
            };
            if findings.is_empty() {
                convergence = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if convergence.is_none() {
            return Verdict {
                findings,
                convergence,
                rehashed: 0,
            };
        }
        // Drained: polled, since no-op and safety-net jobs may still run after the content is in.
        loop {
            findings.not_drained = self
                .drain_findings(mesh)
                .await
                .unwrap_or_else(|e| vec![format!("{e:#}")]);
            if findings.not_drained.is_empty() || started.elapsed() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Once drained nothing more runs: the state is checked again (no flip-flop), then hashed.
        match self.state_findings(acked).await {
            Ok(f) => {
                findings = Findings {
                    not_drained: findings.not_drained,
                    ..f
                }
            }
            Err(e) => findings
                .lost
                .push(format!("reading the registries failed: {e:#}")),
        }
        findings.dead_letters = self
            .dead_letter_findings(mesh, acked)
            .await
            .unwrap_or_else(|e| vec![format!("{e:#}")]);
        let rehashed = match self.rehash_all(acked).await {
            Ok((n, corrupt)) => {
                findings.corrupt = corrupt;
                n
            }
            Err(e) => {
                findings.corrupt.push(format!("{e:#}"));
                0
            }
        };
        Verdict {
            findings,
            convergence,
            rehashed,
        }
    }

    fn is_bidirectional(&self, repo: &str) -> bool {
        self.flows.iter().any(
            |f| matches!(f, Flow::Bidirectional { prefix, .. } if repo.starts_with(prefix.as_str())),
        )
    }

    /// Every check of content placement (not hashing, not draining).
    pub async fn state_findings(&self, acked: &Acked) -> anyhow::Result<Findings> {
        let mut snapshots = BTreeMap::new();
        for (region, host) in &self.hosts {
            snapshots.insert(region.clone(), self.snapshot(host).await?);
        }
        Ok(compare(self, acked, &snapshots))
    }

    /// Every tag of every repository `host` lists, with the digest a `HEAD` answers.
    pub async fn snapshot(&self, host: &str) -> anyhow::Result<Tags> {
        let mut out = Tags::new();
        for repo in self.catalog(host).await? {
            for tag in self.tags(host, &repo).await? {
                // A tag listed but gone by the time of the HEAD is simply not there now.
                if let Some(d) = crate::oci::manifest_digest(host, &repo, &tag).await? {
                    out.insert((repo.clone(), tag), d);
                }
            }
        }
        Ok(out)
    }

    async fn get_json(&self, url: &str) -> anyhow::Result<Option<Value>> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        match r.status().as_u16() {
            200 => {
                let bytes = r.bytes().await.with_context(|| format!("GET {url}"))?;
                Ok(Some(
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("GET {url}: not JSON"))?,
                ))
            }
            404 => Ok(None),
            code => anyhow::bail!("GET {url} answered {code}"),
        }
    }

    async fn catalog(&self, host: &str) -> anyhow::Result<Vec<String>> {
        // distribution refuses `n` above its `catalog.maxentries` (1000) with 400.
        let url = format!("http://{host}/v2/_catalog?n=1000");
        let body = self.get_json(&url).await?.unwrap_or(Value::Null);
        let repos = strings(&body["repositories"]);
        anyhow::ensure!(
            repos.len() < 1000,
            "{url} lists 1000 repositories: the oracle reads one page only"
        );
        Ok(repos)
    }

    async fn tags(&self, host: &str, repo: &str) -> anyhow::Result<Vec<String>> {
        let url = format!("http://{host}/v2/{repo}/tags/list?n=1000");
        let body = self.get_json(&url).await?.unwrap_or(Value::Null);
        Ok(strings(&body["tags"]))
    }

    /// Queues, dead letters and outboxes of every region.
    async fn drain_findings(&self, mesh: &Mesh) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for region in self.hosts.keys() {
            match mesh.queue_stats(region).await? {
                Some(q) => {
                    if q.depth > 0 || q.in_flight > 0 {
                        out.push(format!(
                            "region {region}'s queue: {} waiting, {} running",
                            q.depth, q.in_flight
                        ));
                    }
                }
                None => out.push(format!("region {region} runs no worker to ask")),
            }
            for peer in self.hosts.keys().filter(|p| *p != region) {
                let held = mesh.outbox_len(region, peer).await?;
                if held > 0 {
                    out.push(format!("region {region} holds {held} events for {peer}"));
                }
            }
        }
        Ok(out)
    }

    /// Every region's dead letters against the permanent faults injected (the ledgers'
    /// `broken` images): each dead letter is the copy of a broken image and its reason names the
    /// repository; each broken image left at least one.
    async fn dead_letter_findings(
        &self,
        mesh: &Mesh,
        acked: &Acked,
    ) -> anyhow::Result<Vec<String>> {
        let broken: Vec<(&String, &(String, String), &String)> = acked
            .regions
            .iter()
            .flat_map(|(region, l)| l.broken.iter().map(move |(k, d)| (region, k, d)))
            .collect();
        let mut out = Vec::new();
        let mut explained = BTreeSet::new();
        for region in self.hosts.keys() {
            let Some(letters) = mesh.dead_letters(region, 1000).await? else {
                continue;
            };
            for job in letters {
                let cause = broken.iter().find(|(_, (repo, tag), digest)| {
                    job.repository == *repo
                        && (job.reference == *tag
                            || job.reference == **digest
                            || job.digest == **digest)
                });
                match cause {
                    Some((origin, key, _)) if job.last_error.contains(&job.repository) => {
                        explained.insert(((*origin).clone(), (*key).clone()));
                    }
                    Some(_) => out.push(format!(
                        "region {region}: the dead letter of {}:{} (policy {}) gives no reason                          naming the repository: {:?}",
                        job.repository, job.reference, job.policy, job.last_error
                    )),
                    None => out.push(format!(
                        "region {region}: dead letter {}:{} (policy {}, {} attempts), no                          permanent fault injected there: {}",
                        job.repository, job.reference, job.policy, job.attempt, job.last_error
                    )),
                }
            }
        }
        for (origin, key, digest) in broken {
            if !explained.contains(&(origin.clone(), key.clone())) {
                out.push(format!(
                    "the broken image {}:{} = {digest} in {origin} left no dead letter",
                    key.0, key.1
                ));
            }
        }
        Ok(out)
    }

    /// Fetches every manifest (index children too) and blob every registry's tags reach and
    /// hashes them; the number checked and what did not match.
    /// The images broken on purpose (their sources' `broken` ledgers) are left out.
    async fn rehash_all(&self, acked: &Acked) -> anyhow::Result<(u64, Vec<String>)> {
        let mut corrupt = Vec::new();
        let mut seen = BTreeSet::new();
        for (region, host) in &self.hosts {
            let broken = acked.regions.get(region).map(|l| &l.broken);
            for ((repo, tag), digest) in self.snapshot(host).await? {
                let key = (repo.clone(), tag.clone());
                if broken.is_some_and(|b| b.contains_key(&key)) {
                    continue;
                }
                let mut todo = vec![digest.clone()];
                while let Some(d) = todo.pop() {
                    if !seen.insert((host.clone(), repo.clone(), d.clone())) {
                        continue;
                    }
                    let url = format!("http://{host}/v2/{repo}/manifests/{d}");
                    let bytes = match self.fetch(&url, Some(MANIFEST_ACCEPT)).await {
                        Ok(b) => b,
                        Err(e) => {
                            corrupt.push(format!("{region}: {repo}:{tag} → {d}: {e:#}"));
                            continue;
                        }
                    };
                    if ferry_testkit::sha256_digest(&bytes) != d {
                        corrupt.push(format!(
                            "{region}: manifest {repo}@{d} (via {tag}) hashes to {}",
                            ferry_testkit::sha256_digest(&bytes)
                        ));
                        continue;
                    }
                    let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
                        corrupt.push(format!("{region}: manifest {repo}@{d} is not JSON"));
                        continue;
                    };
                    for child in doc["manifests"].as_array().into_iter().flatten() {
                        if let Some(c) = child["digest"].as_str() {
                            todo.push(c.to_string());
                        }
                    }
                    let blobs = doc["layers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(std::iter::once(&doc["config"]))
                        .filter_map(|b| b["digest"].as_str());
                    for b in blobs {
                        if !seen.insert((host.clone(), repo.clone(), b.to_string())) {
                            continue;
                        }
                        let url = format!("http://{host}/v2/{repo}/blobs/{b}");
                        match self.fetch(&url, None).await {
                            Ok(bytes) if ferry_testkit::sha256_digest(&bytes) == b => {}
                            Ok(bytes) => corrupt.push(format!(
                                "{region}: blob {repo}@{b} hashes to {}",
                                ferry_testkit::sha256_digest(&bytes)
                            )),
                            Err(e) => corrupt.push(format!("{region}: blob {repo}@{b}: {e:#}")),
                        }
                    }
                }
            }
        }
        Ok((seen.len() as u64, corrupt))
    }

    async fn fetch(&self, url: &str, accept: Option<&str>) -> anyhow::Result<Vec<u8>> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(r.status().is_success(), "GET {url} answered {}", r.status());
        Ok(r.bytes()
            .await
            .with_context(|| format!("GET {url}"))?
            .to_vec())
    }

    /// Manifest writes by Ferry on one-way destinations beyond one per digest a tag was given (a
    /// digest reference: beyond one), from the destinations' access logs. Reported, not asserted.
    pub fn duplicate_writes(&self, mesh: &Mesh, acked: &Acked) -> u64 {
        let mut dup = 0;
        for f in &self.flows {
            let Flow::OneWay { from, to, prefix } = f else {
                continue;
            };
            let log =
                std::fs::read_to_string(mesh.region(to).registry.log_path()).unwrap_or_default();
            let mut puts: BTreeMap<(String, String), u64> = BTreeMap::new();
            for line in log.lines().filter(|l| l.contains("\"ferry/")) {
                let Some(path) = line
                    .split_once("\"PUT /v2/")
                    .and_then(|(_, r)| r.split_once(' '))
                    .map(|(p, _)| p)
                else {
                    continue;
                };
                let Some((repo, reference)) = path.split_once("/manifests/") else {
                    continue;
                };
                if repo.starts_with(prefix.as_str()) {
                    *puts
                        .entry((repo.to_string(), reference.to_string()))
                        .or_default() += 1;
                }
            }
            let ever = acked.regions.get(from).map(|l| &l.ever);
            for (key, n) in puts {
                let allowed = if key.1.starts_with("sha256:") {
                    1
                } else {
                    ever.and_then(|e| e.get(&key)).map_or(1, |s| s.len() as u64)
                };
                dup += n.saturating_sub(allowed);
            }
        }
        dup
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn under<'a>(
    tags: &'a Tags,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a (String, String), &'a String)> {
    tags.iter().filter(move |((r, _), _)| r.starts_with(prefix))
}

/// The placement checks over snapshots of every registry (pure, so it is unit-tested).
pub fn compare(oracle: &Oracle, acked: &Acked, snapshots: &BTreeMap<String, Tags>) -> Findings {
    let mut f = Findings::default();
    let empty = Tags::new();
    let snap = |r: &str| snapshots.get(r).unwrap_or(&empty);
    // Sources hold exactly what they acknowledged (outside bidirectional repositories).
    for (region, ledger) in &acked.regions {
        let own: BTreeSet<&String> = oracle
            .writes
            .get(region)
            .into_iter()
            .flatten()
            .filter(|r| !oracle.is_bidirectional(r))
            .collect();
        let held: Tags = snap(region)
            .iter()
            .filter(|((r, _), _)| own.contains(r))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let want: Tags = ledger
            .tags
            .iter()
            .chain(&ledger.broken)
            .filter(|((r, _), _)| own.contains(r))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, d) in &want {
            match held.get(k) {
                Some(h) if h == d => {}
                other => f.source.push(format!(
                    "{region} acknowledged {}:{} = {d}, holds {other:?}",
                    k.0, k.1
                )),
            }
        }
        for (k, d) in &held {
            if !want.contains_key(k) {
                f.source.push(format!(
                    "{region} holds {}:{} = {d}, which its workload did not leave there",
                    k.0, k.1
                ));
            }
        }
    }
    for flow in &oracle.flows {
        match flow {
            Flow::OneWay { from, to, prefix } => {
                let Some(ledger) = acked.regions.get(from) else {
                    continue;
                };
                let want: Tags = under(&ledger.tags, prefix)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let held: Tags = under(snap(to), prefix)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, d) in &want {
                    match held.get(k) {
                        Some(h) if h == d => {}
                        other => f.lost.push(format!(
                            "{from} → {to}: {}:{} = {d} on {from}, {other:?} on {to}",
                            k.0, k.1
                        )),
                    }
                }
                for (k, d) in &held {
                    // A broken image is copied nowhere; should one get through anyway, its fault
                    // was not permanent, which the dead-letter check reports.
                    if want.contains_key(k) || ledger.broken.contains_key(k) {
                        continue;
                    }
                    let line = format!(
                        "{from} → {to}: {}:{} = {d} on {to}, gone from {from}",
                        k.0, k.1
                    );
                    if ledger.deleted_digest(&k.0, d) {
                        // The source deleted this very digest: the guard says delete.
                        f.not_deleted.push(line);
                    } else {
                        f.kept_by_guard.push(format!(
                            "{line}, which still holds {d} untagged (the digest guard keeps it)"
                        ));
                    }
                }
            }
            Flow::Bidirectional { x, y, prefix } => {
                let (lx, ly) = (acked.regions.get(x), acked.regions.get(y));
                let (sx, sy) = (snap(x), snap(y));
                let keys: BTreeSet<&(String, String)> = under(sx, prefix)
                    .chain(under(sy, prefix))
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    let (dx, dy) = (sx.get(k), sy.get(k));
                    if dx != dy {
                        let line =
                            format!("{x} ↔ {y}: {}:{} is {dx:?} on {x}, {dy:?} on {y}", k.0, k.1);
                        // One side's delete took the tag; the other kept it at a digest the
                        // deleting side had pushed under it and nobody deleted (its move to the
                        // deleted digest came too late to be copied): the event of a tag delete
                        // names no digest, so the digest guard keeps the tag, as on a one-way
                        // replica above.
                        let one_sided = match (dx, dy) {
                            (Some(d), None) => Some((d, ly)),
                            (None, Some(d)) => Some((d, lx)),
                            _ => None,
                        };
                        let guarded = one_sided.is_some_and(|(d, absent)| {
                            absent.is_some_and(|l| {
                                l.touched_by_delete.contains(k)
                                    && l.ever.get(k).is_some_and(|s| s.contains(d))
                            }) && ![lx, ly].iter().flatten().any(|l| l.deleted_digest(&k.0, d))
                        });
                        if guarded {
                            f.kept_by_guard.push(format!(
                                "{line}: deleted on one side, which still holds it untagged \
                                 (the digest guard keeps it)"
                            ));
                        } else {
                            f.diverged.push(line);
                        }
                        continue;
                    }
                    let pushed = |l: Option<&crate::workload::RegionLedger>, d: &String| {
                        l.and_then(|l| l.ever.get(k)).is_some_and(|s| s.contains(d))
                    };
                    if let Some(d) = dx {
                        if !pushed(lx, d) && !pushed(ly, d) {
                            f.diverged.push(format!(
                                "{x} ↔ {y}: {}:{} = {d}, never pushed under that tag",
                                k.0, k.1
                            ));
                        }
                    }
                }
                // A tag pushed on either side and never taken by a delete is on both.
                let ledgers = [lx, ly];
                let pushed_tags: BTreeSet<&(String, String)> = ledgers
                    .iter()
                    .flatten()
                    .flat_map(|l| l.ever.keys())
                    .filter(|(r, _)| r.starts_with(prefix.as_str()))
                    .collect();
                for k in pushed_tags {
                    let deleted = ledgers
                        .iter()
                        .flatten()
                        .any(|l| l.touched_by_delete.contains(k));
                    if !deleted && (!sx.contains_key(k) || !sy.contains_key(k)) {
                        f.lost.push(format!(
                            "{x} ↔ {y}: {}:{} was pushed and never deleted, on {x}: {}, on {y}: {}",
                            k.0,
                            k.1,
                            sx.contains_key(k),
                            sy.contains_key(k)
                        ));
                    }
                }
            }
        }
    }
    // Nothing outside the policies: every repository with tags is one the region writes or a
    // policy writes into it.
    for (region, tags) in snapshots {
        let own: BTreeSet<&String> = oracle.writes.get(region).into_iter().flatten().collect();
        let repos: BTreeSet<&String> = tags.keys().map(|(r, _)| r).collect();
        for repo in repos {
            let covered = own.contains(repo)
                || oracle.flows.iter().any(|fl| match fl {
                    Flow::OneWay { to, prefix, .. } => to == region && repo.starts_with(prefix),
                    Flow::Bidirectional { x, y, prefix } => {
                        (x == region || y == region) && repo.starts_with(prefix)
                    }
                });
            if !covered {
                f.outside.push(format!(
                    "{region} holds tags in {repo}, which neither its workload nor a policy writes"
                ));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::RegionLedger;

    fn key(r: &str, t: &str) -> (String, String) {
        (r.to_string(), t.to_string())
    }

    fn oracle() -> Oracle {
        Oracle::new(
            [("a", "h1"), ("b", "h2"), ("c", "h3")]
                .into_iter()
                .map(|(r, h)| (r.to_string(), h.to_string()))
                .collect(),
            [
                ("a", vec!["app/x", "private/p"]),
                ("b", vec!["shared/s"]),
                ("c", vec!["shared/s"]),
            ]
            .into_iter()
            .map(|(r, v)| (r.to_string(), v.into_iter().map(str::to_string).collect()))
            .collect(),
            vec![
                Flow::OneWay {
                    from: "a".into(),
                    to: "b".into(),
                    prefix: "app/".into(),
                },
                Flow::Bidirectional {
                    x: "b".into(),
                    y: "c".into(),
                    prefix: "shared/".into(),
                },
            ],
        )
        .unwrap()
    }

    fn ledger(tags: &[(&str, &str, &str)]) -> RegionLedger {
        let mut l = RegionLedger::default();
        for (r, t, d) in tags {
            l.tags.insert(key(r, t), d.to_string());
            l.ever.entry(key(r, t)).or_default().insert(d.to_string());
        }
        l
    }

    fn snap(tags: &[(&str, &str, &str)]) -> Tags {
        tags.iter()
            .map(|(r, t, d)| (key(r, t), d.to_string()))
            .collect()
    }

    fn acked(a: RegionLedger, b: RegionLedger, c: RegionLedger) -> Acked {
        Acked {
            regions: [("a", a), ("b", b), ("c", c)]
                .into_iter()
                .map(|(r, l)| (r.to_string(), l))
                .collect(),
            last_ack: None,
        }
    }

    #[test]
    fn a_converged_mesh_has_no_findings() {
        let acked = acked(
            ledger(&[("app/x", "t1", "d1"), ("private/p", "t", "p")]),
            ledger(&[("shared/s", "t", "s1")]),
            ledger(&[("shared/s", "t", "s2")]),
        );
        let snaps = [
            ("a", snap(&[("app/x", "t1", "d1"), ("private/p", "t", "p")])),
            ("b", snap(&[("app/x", "t1", "d1"), ("shared/s", "t", "s2")])),
            ("c", snap(&[("shared/s", "t", "s2")])),
        ]
        .into_iter()
        .map(|(r, s)| (r.to_string(), s))
        .collect();
        let f = compare(&oracle(), &acked, &snaps);
        assert!(f.is_empty(), "{f}");
    }

    #[test]
    fn a_broken_image_is_expected_at_its_source_and_on_no_replica() {
        let mut a = ledger(&[("app/x", "t1", "d1")]);
        a.broken.insert(key("app/x", "broken-3"), "bad".into());
        let acked = acked(a, RegionLedger::default(), RegionLedger::default());
        let snaps = |a_holds: &[(&str, &str, &str)]| -> BTreeMap<String, Tags> {
            [
                ("a", snap(a_holds)),
                ("b", snap(&[("app/x", "t1", "d1")])),
                ("c", snap(&[])),
            ]
            .into_iter()
            .map(|(r, s)| (r.to_string(), s))
            .collect()
        };
        let f = compare(
            &oracle(),
            &acked,
            &snaps(&[("app/x", "t1", "d1"), ("app/x", "broken-3", "bad")]),
        );
        assert!(f.is_empty(), "{f}");
        // The source must still hold it: that it is not copied is the fault, not a loss there.
        let f = compare(&oracle(), &acked, &snaps(&[("app/x", "t1", "d1")]));
        assert!(f.source.iter().any(|s| s.contains("broken-3")), "{f}");
    }

    #[test]
    fn a_lost_copy_a_leftover_delete_a_divergence_and_a_leak_are_each_found() {
        let mut a = ledger(&[("app/x", "t1", "d1"), ("private/p", "t", "p")]);
        a.deleted.push(("app/x".into(), "d0".into()));
        let acked = acked(
            a,
            ledger(&[("shared/s", "t", "s1"), ("shared/s", "u", "s3")]),
            ledger(&[("shared/s", "t", "s2")]),
        );
        let snaps = [
            ("a", snap(&[("app/x", "t1", "d1"), ("private/p", "t", "p")])),
            (
                "b",
                snap(&[
                    ("app/x", "gone", "d0"),
                    ("shared/s", "t", "s1"),
                    ("shared/s", "u", "s3"),
                ]),
            ),
            (
                "c",
                snap(&[("shared/s", "t", "s2"), ("private/p", "t", "p")]),
            ),
        ]
        .into_iter()
        .map(|(r, s)| (r.to_string(), s))
        .collect();
        let f = compare(&oracle(), &acked, &snaps);
        // app/x:t1 missing on b; shared/s:u only on b.
        assert_eq!(f.lost.len(), 2, "{f}");
        assert_eq!(f.not_deleted.len(), 1, "{f}");
        // shared/s:t differs, shared/s:u only on one side.
        assert_eq!(f.diverged.len(), 2, "{f}");
        assert_eq!(f.outside.len(), 1, "{f}");
        assert!(f.source.is_empty(), "{f}");
    }

    #[test]
    fn a_replica_tag_left_at_a_digest_the_source_still_holds_is_kept_by_the_guard_not_a_failure() {
        // a moved t1 from d1 to d2, then deleted d2: b never saw the move and keeps t1 = d1.
        let mut a = ledger(&[]);
        a.ever
            .insert(key("app/x", "t1"), ["d1", "d2"].map(String::from).into());
        a.deleted.push(("app/x".into(), "d2".into()));
        let acked = acked(a, RegionLedger::default(), RegionLedger::default());
        let snaps = [("a", snap(&[])), ("b", snap(&[("app/x", "t1", "d1")]))]
            .into_iter()
            .map(|(r, s)| (r.to_string(), s))
            .collect();
        let f = compare(&oracle(), &acked, &snaps);
        assert!(f.is_empty(), "{f}");
        assert_eq!(f.kept_by_guard.len(), 1, "{f:?}");
        // Had b held d2 itself, the guard would say delete.
        let snaps = [("a", snap(&[])), ("b", snap(&[("app/x", "t1", "d2")]))]
            .into_iter()
            .map(|(r, s)| (r.to_string(), s))
            .collect();
        let f = compare(&oracle(), &acked, &snaps);
        assert_eq!(f.not_deleted.len(), 1, "{f}");
    }

    #[test]
    fn seed_0x50a4_a_tag_moved_then_deleted_on_one_bidirectional_side_is_kept_by_the_guard_on_the_other(
    ) {
        // c signed x0 (tag x0.sig = s1), both sides held it; c then moved x0.sig to s2 and
        // deleted s2 within 2 s: b skipped the move (the tag was gone) and kept x0.sig = s1 when
        // the tag delete, naming no digest, arrived.
        let key_sig = key("shared/s", "x0.sig");
        let mut c = ledger(&[]);
        c.ever
            .insert(key_sig.clone(), ["s1", "s2"].map(String::from).into());
        c.deleted.push(("shared/s".into(), "s2".into()));
        c.touched_by_delete.insert(key_sig.clone());
        let acked = acked(RegionLedger::default(), RegionLedger::default(), c);
        let snaps = |b: &[(&str, &str, &str)]| -> BTreeMap<String, Tags> {
            [("a", snap(&[])), ("b", snap(b)), ("c", snap(&[]))]
                .into_iter()
                .map(|(r, s)| (r.to_string(), s))
                .collect()
        };
        let f = compare(&oracle(), &acked, &snaps(&[("shared/s", "x0.sig", "s1")]));
        assert!(f.is_empty(), "{f}");
        assert_eq!(f.kept_by_guard.len(), 1, "{f:?}");
        // Content c deleted, or never pushed under that tag, is a divergence.
        for held in ["s2", "s9"] {
            let f = compare(&oracle(), &acked, &snaps(&[("shared/s", "x0.sig", held)]));
            assert_eq!(f.diverged.len(), 1, "{held}: {f}");
            assert!(f.kept_by_guard.is_empty(), "{held}: {f:?}");
        }
    }

    #[test]
    fn a_source_missing_an_acknowledged_push_is_found() {
        let acked = acked(
            ledger(&[("app/x", "t1", "d1")]),
            RegionLedger::default(),
            RegionLedger::default(),
        );
        let snaps = [("a", snap(&[])), ("b", snap(&[("app/x", "t1", "d1")]))]
            .into_iter()
            .map(|(r, s)| (r.to_string(), s))
            .collect();
        let f = compare(&oracle(), &acked, &snaps);
        assert_eq!(f.source.len(), 1, "{f}");
    }
}
