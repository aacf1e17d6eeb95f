//! The seeded workload of the chaos oracle: distinct images (shared base layers, small to large
//! layers, multi-arch indexes, cosign-style signatures as referrers) pushed, re-tagged, moved and
//! deleted in every region at once, at a given rate for a given time.
//!
//! [`plan`] turns a seed into a [`Plan`]: per region, a list of timed [`Op`]s over the repositories
//! that region writes. It simulates each region's tags while planning, so a re-tag, move or delete
//! always names a tag that exists at that point, and the plan is a pure function of the seed.
//! [`run`] executes the plans concurrently (one task per region, ops in order) against the
//! registries, over plain HTTP and skopeo only, and records every **acknowledged** op in the
//! [`Acked`] ledger the oracle later compares the registries with.
//!
//! # Invariants
//! - Every image is new content (its layers' seeds derive from the run seed, the region and a
//!   counter), except the shared base layers; a re-tag pushes the same image under another tag.
//! - An op is recorded only once the registry acknowledged it; a failed attempt is retried until
//!   a generous deadline (a push is idempotent; a delete answered 404 on a retry was done by the
//!   attempt whose answer was lost), so the ledger is exactly what the source registry must hold.
//! - A region's ops wait for its [`Gates`]: a fault that must not race a write (a registry or
//!   Redis restart) closes them, and ops resume where they stopped when it reopens them.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_testkit::{skopeo, LayerSpec, LayoutBuilder};
use tokio::sync::RwLock;

use crate::seeded::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// How long one op may keep failing before the run fails (a registry restart lasts seconds).
const OP_DEADLINE: Duration = Duration::from_secs(120);

/// What one region writes.
#[derive(Clone, Debug)]
pub struct RegionLoad {
    pub region: String,
    /// Repositories the workload pushes to in this region (e.g. `app/web`).
    pub repos: Vec<String>,
}

/// The shape of a workload.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub regions: Vec<RegionLoad>,
    /// Ops per second, per region.
    pub ops_per_second: f64,
    /// How long ops keep being issued.
    pub duration: Duration,
    /// Tags per repository the workload draws from (few tags: moves and conflicts happen).
    pub tags_per_repo: u64,
}

/// What an image is made of; [`ImageSpec::build`] writes it as an OCI layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSpec {
    /// One linux/amd64 image: a shared base layer and its own layers.
    Single { layers: Vec<LayerSpec> },
    /// An index of a linux/amd64 and a linux/arm64 image.
    Index {
        amd64: Vec<LayerSpec>,
        arm64: Vec<LayerSpec>,
    },
    /// A cosign-style signature (OCI artifact with a `subject`) of image `subject` (an id).
    Signature { subject: u64, payload: u64 },
}

/// One step of a region's workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Push image `image` (an id into [`Plan::images`]) as `repo:tag`: a new tag, or a move
    /// when the tag existed.
    Push {
        repo: String,
        tag: String,
        image: u64,
    },
    /// Push the image `repo:from` holds as `repo:tag` too.
    Retag {
        repo: String,
        from: String,
        tag: String,
    },
    /// `DELETE` the manifest `repo:tag` holds, by digest (distribution removes every tag on it).
    Delete { repo: String, tag: String },
}

/// An op and when it is due, from the start of the run.
#[derive(Clone, Debug)]
pub struct Timed {
    pub at: Duration,
    pub op: Op,
}

/// A seed's workload.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub regions: BTreeMap<String, Vec<Timed>>,
    pub images: BTreeMap<u64, ImageSpec>,
}

/// Turns `seed` into a [`Plan`] (a pure function of its arguments).
pub fn plan(seed: u64, opts: &WorkloadOptions) -> Plan {
    let root = Rng::new(seed);
    let mut bases = root.fork(0xBA5E);
    // A few base layers every region's images share (as images share a distro base).
    let base_layers: Vec<LayerSpec> = (0..3)
        .map(|_| LayerSpec {
            seed: bases.next_u64(),
            size: 256 * KIB,
        })
        .collect();
    let mut images = BTreeMap::new();
    let mut regions = BTreeMap::new();
    let count = (opts.ops_per_second * opts.duration.as_secs_f64()).ceil() as u64;
    for (index, load) in opts.regions.iter().enumerate() {
        let mut rng = root.fork(index as u64 + 1);
        // Image ids: region index in the high bits, so regions never share an image.
        let mut next_id = (index as u64 + 1) << 32;
        // (repo, tag) → image id, as the region's registry will hold it.
        let mut tags: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut ops = Vec::new();
        for i in 0..count {
            let at = Duration::from_secs_f64(i as f64 / opts.ops_per_second);
            let repo = rng.pick(&load.repos).clone();
            let present: Vec<(String, u64)> = tags
                .iter()
                .filter(|((r, _), _)| *r == repo)
                .map(|((_, t), id)| (t.clone(), *id))
                .collect();
            // Re-tags and signatures take images, never signatures (whose tag is cosign's).
            let unsigned: Vec<(String, u64)> = present
                .iter()
                .filter(|(_, id)| !matches!(images.get(id), Some(ImageSpec::Signature { .. })))
                .cloned()
                .collect();
            let roll = rng.below(100);
            let op = if present.is_empty() || roll < 45 || (roll < 75 && unsigned.is_empty()) {
                // A new image under a tag of the pool: new, or a move when the tag exists.
                let tag = format!("t{}", rng.below(opts.tags_per_repo));
                next_id += 1;
                images.insert(next_id, new_image(&mut rng, &base_layers));
                tags.insert((repo.clone(), tag.clone()), next_id);
                Op::Push {
                    repo,
                    tag,
                    image: next_id,
                }
            } else if roll < 60 {
                let (from, id) = rng.pick(&unsigned).clone();
                let tag = format!("t{}", rng.below(opts.tags_per_repo));
                tags.insert((repo.clone(), tag.clone()), id);
                Op::Retag { repo, from, tag }
            } else if roll < 75 {
                // A signature of an image the repository holds, under cosign's tag scheme (the
                // tag is only known once the subject is built: `run` names it).
                let (_, subject) = rng.pick(&unsigned).clone();
                next_id += 1;
                images.insert(
                    next_id,
                    ImageSpec::Signature {
                        subject,
                        payload: rng.next_u64(),
                    },
                );
                let tag = format!("sig-of-{subject}");
                tags.insert((repo.clone(), tag.clone()), next_id);
                Op::Push {
                    repo,
                    tag,
                    image: next_id,
                }
            } else {
                let (tag, id) = rng.pick(&present).clone();
                // distribution deletes the manifest: every tag on it goes.
                tags.retain(|(r, _), v| !(*r == repo && *v == id));
                Op::Delete { repo, tag }
            };
            ops.push(Timed { at, op });
        }
        regions.insert(load.region.clone(), ops);
    }
    Plan {
        seed,
        regions,
        images,
    }
}

/// A new single image (most) or index, with a shared base and small to large own layers.
fn new_image(rng: &mut Rng, bases: &[LayerSpec]) -> ImageSpec {
    let layers = |rng: &mut Rng| {
        let mut v = vec![*rng.pick(bases)];
        for _ in 0..rng.between(1, 2) {
            let size = if rng.chance(10) {
                rng.between(MIB, 3 * MIB)
            } else {
                rng.between(KIB, 96 * KIB)
            };
            v.push(LayerSpec {
                seed: rng.next_u64(),
                size,
            });
        }
        v
    };
    if rng.chance(15) {
        ImageSpec::Index {
            amd64: layers(rng),
            arm64: layers(rng),
        }
    } else {
        ImageSpec::Single {
            layers: layers(rng),
        }
    }
}

impl ImageSpec {
    /// Writes the image (and, for a signature, its subject) as an OCI layout in `dir`, tagged
    /// `img`; returns the layout, the pushed manifest's digest and, for a signature, the tag
    /// cosign would give it.
    fn build(&self, images: &BTreeMap<u64, ImageSpec>, dir: &Path) -> anyhow::Result<Built> {
        let mut b = LayoutBuilder::new(dir)?;
        let (digest, tag) = match self {
            ImageSpec::Single { layers } => (b.image("img", layers)?.digest, None),
            ImageSpec::Index { amd64, arm64 } => {
                let x = b.image_for_platform("linux", "amd64", None, amd64)?;
                let y = b.image_for_platform("linux", "arm64", Some("v8"), arm64)?;
                let index = b.index(
                    "img",
                    &[
                        (x, "linux", "amd64", None),
                        (y, "linux", "arm64", Some("v8")),
                    ],
                )?;
                (index.digest, None)
            }
            ImageSpec::Signature { subject, payload } => {
                let subject_blob = match images.get(subject) {
                    Some(ImageSpec::Single { layers }) => b.image("subject", layers)?,
                    Some(ImageSpec::Index { amd64, arm64 }) => {
                        let x = b.image_for_platform("linux", "amd64", None, amd64)?;
                        let y = b.image_for_platform("linux", "arm64", Some("v8"), arm64)?;
                        b.index(
                            "subject",
                            &[
                                (x, "linux", "amd64", None),
                                (y, "linux", "arm64", Some("v8")),
                            ],
                        )?
                    }
                    _ => anyhow::bail!("signature subject {subject} is not an image"),
                };
                let sig = b.artifact(
                    "img",
                    "application/vnd.dev.cosign.artifact.sig.v1+json",
                    format!("signature {payload} of {}", subject_blob.digest).as_bytes(),
                    "application/vnd.dev.cosign.simplesigning.v1+json",
                    Some(&subject_blob),
                )?;
                (
                    sig.digest,
                    Some(format!("sha256-{}.sig", subject_blob.hex())),
                )
            }
        };
        Ok(Built {
            layout: b.finish()?,
            digest,
            tag,
        })
    }

    /// Bytes of the layers this image adds (a signature's payload is negligible).
    pub fn layer_bytes(&self) -> u64 {
        match self {
            ImageSpec::Single { layers } => layers.iter().map(|l| l.size).sum(),
            ImageSpec::Index { amd64, arm64 } => amd64.iter().chain(arm64).map(|l| l.size).sum(),
            ImageSpec::Signature { .. } => 0,
        }
    }
}

/// A built image.
#[derive(Clone, Debug)]
struct Built {
    layout: PathBuf,
    digest: String,
    /// The tag a signature must have (`sha256-<subject hex>.sig`).
    tag: Option<String>,
}

/// What a region's registry was told to hold, op by op, as acknowledged.
#[derive(Clone, Debug, Default)]
pub struct RegionLedger {
    /// `(repo, tag)` → digest now.
    pub tags: BTreeMap<(String, String), String>,
    /// Every digest a `(repo, tag)` was ever given here.
    pub ever: BTreeMap<(String, String), BTreeSet<String>>,
    /// `(repo, digest)` deleted here.
    pub deleted: Vec<(String, String)>,
    /// Tags a delete here took (every tag that ever pointed at a deleted digest).
    pub touched_by_delete: BTreeSet<(String, String)>,
    /// `(repo, tag)` → digest of the images pushed here and then broken on purpose (a layer
    /// deleted behind the manifest, [`Runner::push_broken`]): held here, copied nowhere, each
    /// expected as a dead letter of the region that copies it.
    pub broken: BTreeMap<(String, String), String>,
    pub pushes: u64,
    pub retags: u64,
    pub deletes: u64,
    /// Distinct images pushed, and the bytes of their own layers.
    pub images: u64,
    pub bytes: u64,
}

impl RegionLedger {
    fn set(&mut self, repo: &str, tag: &str, digest: &str) {
        let key = (repo.to_string(), tag.to_string());
        self.tags.insert(key.clone(), digest.to_string());
        self.ever.entry(key).or_default().insert(digest.to_string());
    }

    /// Whether a delete here took `digest` from `repo`.
    pub fn deleted_digest(&self, repo: &str, digest: &str) -> bool {
        self.deleted.iter().any(|(r, d)| r == repo && d == digest)
    }

    fn delete(&mut self, repo: &str, digest: &str) {
        self.tags.retain(|(r, _), d| !(r == repo && d == digest));
        for (key, digests) in &self.ever {
            if key.0 == repo && digests.contains(digest) {
                self.touched_by_delete.insert(key.clone());
            }
        }
        self.deleted.push((repo.to_string(), digest.to_string()));
    }
}

/// Every region's acknowledged ops.
#[derive(Clone, Debug, Default)]
pub struct Acked {
    pub regions: BTreeMap<String, RegionLedger>,
    /// When the last op was acknowledged.
    pub last_ack: Option<Instant>,
}

/// Per-region gates: ops hold a read guard while they run; a fault that must not race a write
/// takes every write guard (waiting for ops in flight), and ops wait until it lets go.
#[derive(Default)]
pub struct Gates {
    gates: BTreeMap<String, Arc<RwLock<()>>>,
}

/// Held while writes are paused; dropping it resumes them.
pub struct Paused {
    _guards: Vec<tokio::sync::OwnedRwLockWriteGuard<()>>,
}

impl Gates {
    pub fn new<'a>(regions: impl IntoIterator<Item = &'a str>) -> Gates {
        Gates {
            gates: regions
                .into_iter()
                .map(|r| (r.to_string(), Arc::new(RwLock::new(()))))
                .collect(),
        }
    }

    /// Pauses every region's writes (returns once no op is in flight).
    pub async fn pause_all(&self) -> Paused {
        let mut guards = Vec::new();
        for g in self.gates.values() {
            guards.push(g.clone().write_owned().await);
        }
        Paused { _guards: guards }
    }

    fn gate(&self, region: &str) -> Arc<RwLock<()>> {
        self.gates
            .get(region)
            .cloned()
            .unwrap_or_else(|| Arc::new(RwLock::new(())))
    }
}

/// Runs a region's ops against registries, recording acknowledgements.
#[derive(Clone)]
pub struct Runner {
    plan: Arc<Plan>,
    /// Region → registry host (`IP:PORT`, plain HTTP).
    hosts: Arc<BTreeMap<String, String>>,
    pub acked: Arc<Mutex<Acked>>,
    pub gates: Arc<Gates>,
    dir: Arc<tempfile::TempDir>,
    /// Image id → built layout (built once, pushed as often as re-tagged).
    built: Arc<Mutex<BTreeMap<u64, Built>>>,
    /// Ids of extra images ([`Runner::push_extra`]), above every planned id.
    extra: Arc<std::sync::atomic::AtomicU64>,
}

impl Runner {
    pub fn new(plan: Plan, hosts: BTreeMap<String, String>) -> anyhow::Result<Runner> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-oracle-images-")
            .tempdir()
            .context("creating the workload's image dir")?;
        let gates = Gates::new(plan.regions.keys().map(String::as_str));
        let mut acked = Acked::default();
        for r in plan.regions.keys() {
            acked.regions.insert(r.clone(), RegionLedger::default());
        }
        Ok(Runner {
            plan: Arc::new(plan),
            hosts: Arc::new(hosts),
            acked: Arc::new(Mutex::new(acked)),
            gates: Arc::new(gates),
            dir: Arc::new(dir),
            built: Arc::new(Mutex::new(BTreeMap::new())),
            extra: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX / 2)),
        })
    }

    /// A snapshot of the ledger.
    pub fn acked(&self) -> Acked {
        self.acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs every region's plan at once, each op at its time (or as soon as the one before it is
    /// done); returns when every op is acknowledged.
    pub async fn run(&self, started: Instant) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for (region, ops) in self.plan.regions.clone() {
            let this = self.clone();
            tasks.spawn(async move {
                for (i, timed) in ops.iter().enumerate() {
                    tokio::time::sleep_until((started + timed.at).into()).await;
                    this.execute(&region, &timed.op)
                        .await
                        .with_context(|| format!("region {region}'s op #{i} ({:?})", timed.op))?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a workload task panicked")??;
        }
        Ok(())
    }

    /// Pushes a new image outside the plan as `repo:tag` in `region` (the canary a fault pushes
    /// right before it kills a registry), recorded like any push. The caller holds the gates.
    pub async fn push_extra(
        &self,
        region: &str,
        repo: &str,
        tag: &str,
        seed: u64,
    ) -> anyhow::Result<String> {
        let (built, spec) = self.extra_image(seed, 32 * KIB)?;
        self.push_built(region, repo, tag, &built, spec.layer_bytes())
            .await?;
        Ok(built.digest)
    }

    /// Builds a new single-layer image outside the plan (an id above every planned one).
    fn extra_image(&self, seed: u64, size: u64) -> anyhow::Result<(Built, ImageSpec)> {
        let id = self
            .extra
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spec = ImageSpec::Single {
            layers: vec![LayerSpec { seed, size }],
        };
        Ok((self.build(id, Some(&spec))?, spec))
    }

    /// Pushes a new image outside the plan as `repo:tag` in `region`, then deletes its only layer
    /// from the repository (`DELETE /v2/<repo>/blobs/<digest>`): a source that lost a layer
    /// behind its manifest (a garbage collection racing a push, a damaged disk), which no retry
    /// repairs. Recorded in the ledger's `broken`, not as a tag to replicate. The caller keeps
    /// Ferry from reading the image until the layer is gone.
    pub async fn push_broken(
        &self,
        region: &str,
        repo: &str,
        tag: &str,
        seed: u64,
    ) -> anyhow::Result<String> {
        let (built, spec) = self.extra_image(seed, 16 * KIB)?;
        self.push(region, repo, tag, &built.layout).await?;
        let manifest = built
            .layout
            .join("blobs/sha256")
            .join(built.digest.trim_start_matches("sha256:"));
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?,
        )
        .with_context(|| format!("{} is not JSON", manifest.display()))?;
        let layer = doc["layers"][0]["digest"]
            .as_str()
            .with_context(|| format!("{} names no layer", manifest.display()))?;
        self.delete(region, &format!("{repo}/blobs/{layer}"))
            .await?;
        self.record(region, |l| {
            l.broken
                .insert((repo.to_string(), tag.to_string()), built.digest.clone());
            l.pushes += 1;
            l.images += 1;
            l.bytes += spec.layer_bytes();
        });
        Ok(built.digest)
    }

    async fn execute(&self, region: &str, op: &Op) -> anyhow::Result<()> {
        let gate = self.gates.gate(region);
        let _open = gate.read().await;
        match op {
            Op::Push { repo, tag, image } => {
                let built = self.build(*image, None)?;
                let tag = built.tag.clone().unwrap_or_else(|| tag.clone());
                let bytes = self
                    .plan
                    .images
                    .get(image)
                    .map_or(0, ImageSpec::layer_bytes);
                self.push_built(region, repo, &tag, &built, bytes).await?;
            }
            Op::Retag { repo, from, tag } => {
                let digest = self.tag_digest(region, repo, from)?;
                let id = self.image_of(&digest)?;
                let built = self.build(id, None)?;
                self.push(region, repo, tag, &built.layout).await?;
                self.record(region, |l| {
                    l.set(repo, tag, &digest);
                    l.retags += 1;
                });
            }
            Op::Delete { repo, tag } => {
                let digest = self.tag_digest(region, repo, tag)?;
                self.delete(region, &format!("{repo}/manifests/{digest}"))
                    .await?;
                self.record(region, |l| {
                    l.delete(repo, &digest);
                    l.deletes += 1;
                });
            }
        }
        Ok(())
    }

    async fn push_built(
        &self,
        region: &str,
        repo: &str,
        tag: &str,
        built: &Built,
        bytes: u64,
    ) -> anyhow::Result<()> {
        self.push(region, repo, tag, &built.layout).await?;
        self.record(region, |l| {
            l.set(repo, tag, &built.digest);
            l.pushes += 1;
            l.images += 1;
            l.bytes += bytes;
        });
        Ok(())
    }

    /// The digest the ledger has for `repo:tag` in `region`. The plan only names tags its own
    /// simulation holds; a signature's tag differs from the planned one, so it is found by the
    /// planned name's image.
    fn tag_digest(&self, region: &str, repo: &str, tag: &str) -> anyhow::Result<String> {
        let acked = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ledger = acked.regions.get(region).context("no such region")?;
        if let Some(d) = ledger.tags.get(&(repo.to_string(), tag.to_string())) {
            return Ok(d.clone());
        }
        if let Some(subject) = tag
            .strip_prefix("sig-of-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            let built = self
                .built
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sig = built
                .iter()
                .find(|(id, _)| {
                    matches!(self.plan.images.get(id), Some(ImageSpec::Signature { subject: s, .. }) if *s == subject)
                })
                .map(|(_, b)| b.clone());
            if let Some(sig) = sig {
                if let Some(t) = &sig.tag {
                    if let Some(d) = ledger.tags.get(&(repo.to_string(), t.clone())) {
                        return Ok(d.clone());
                    }
                }
            }
        }
        anyhow::bail!("the workload's plan names {repo}:{tag} in {region}, which its ledger lacks")
    }

    /// The image id built with `digest`.
    fn image_of(&self, digest: &str) -> anyhow::Result<u64> {
        self.built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(_, b)| b.digest == digest)
            .map(|(id, _)| *id)
            .with_context(|| format!("no image of the workload has digest {digest}"))
    }

    fn build(&self, id: u64, spec: Option<&ImageSpec>) -> anyhow::Result<Built> {
        if let Some(b) = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
        {
            return Ok(b.clone());
        }
        let spec = match spec {
            Some(s) => s,
            None => self
                .plan
                .images
                .get(&id)
                .with_context(|| format!("the plan has no image {id}"))?,
        };
        let built = spec.build(
            &self.plan.images,
            &self.dir.path().join(format!("img-{id}")),
        )?;
        self.built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, built.clone());
        Ok(built)
    }

    fn record(&self, region: &str, f: impl FnOnce(&mut RegionLedger)) {
        let mut acked = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = acked.regions.get_mut(region) {
            f(l);
        }
        acked.last_ack = Some(Instant::now());
    }

    fn host(&self, region: &str) -> anyhow::Result<&str> {
        self.hosts
            .get(region)
            .map(String::as_str)
            .with_context(|| format!("no registry for region {region}"))
    }

    /// skopeo's push, retried until [`OP_DEADLINE`].
    async fn push(&self, region: &str, repo: &str, tag: &str, layout: &Path) -> anyhow::Result<()> {
        let host = self.host(region)?;
        let started = Instant::now();
        loop {
            match skopeo::push_layout(layout, "img", host, &format!("{repo}:{tag}")).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() < OP_DEADLINE => {
                    eprintln!("workload: push of {repo}:{tag} to {region} failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `DELETE /v2/<path>` (`<repo>/manifests/<digest>` or `<repo>/blobs/<digest>`), retried
    /// until [`OP_DEADLINE`]; a 404 after a failed attempt means that attempt deleted it.
    async fn delete(&self, region: &str, path: &str) -> anyhow::Result<()> {
        let host = self.host(region)?;
        let url = format!("http://{host}/v2/{path}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = http.delete(&url).send().await;
            let failure = match outcome {
                Ok(r) if r.status().as_u16() == 202 => return Ok(()),
                Ok(r) if r.status().as_u16() == 404 && attempts > 1 => return Ok(()),
                Ok(r) if r.status().is_client_error() => {
                    anyhow::bail!("DELETE {url} answered {}", r.status())
                }
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => format!("{e}"),
            };
            anyhow::ensure!(
                started.elapsed() < OP_DEADLINE,
                "DELETE {url} kept failing for {OP_DEADLINE:?}: {failure}"
            );
            eprintln!("workload: DELETE {url} failed, retrying: {failure}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WorkloadOptions {
        WorkloadOptions {
            regions: vec![
                RegionLoad {
                    region: "a".into(),
                    repos: vec!["app/one".into(), "app/two".into()],
                },
                RegionLoad {
                    region: "b".into(),
                    repos: vec!["shared/x".into()],
                },
            ],
            ops_per_second: 1.0,
            duration: Duration::from_secs(60),
            tags_per_repo: 4,
        }
    }

    #[test]
    fn a_seed_plans_the_same_ops_and_another_seed_plans_others() {
        let (p, q, r) = (plan(9, &opts()), plan(9, &opts()), plan(10, &opts()));
        assert_eq!(p.regions["a"].len(), 60);
        let ops =
            |p: &Plan| -> Vec<Op> { p.regions.values().flatten().map(|t| t.op.clone()).collect() };
        assert_eq!(ops(&p), ops(&q));
        assert_eq!(p.images, q.images);
        assert_ne!(ops(&p), ops(&r));
    }

    #[test]
    fn plans_mix_pushes_moves_retags_signatures_indexes_and_deletes() {
        let p = plan(1, &opts());
        let ops: Vec<&Op> = p.regions.values().flatten().map(|t| &t.op).collect();
        assert!(ops.iter().any(|o| matches!(o, Op::Retag { .. })));
        assert!(ops.iter().any(|o| matches!(o, Op::Delete { .. })));
        assert!(p
            .images
            .values()
            .any(|i| matches!(i, ImageSpec::Index { .. })));
        assert!(p
            .images
            .values()
            .any(|i| matches!(i, ImageSpec::Signature { .. })));
        // A move: some tag pushed twice with different images.
        let mut seen = BTreeSet::new();
        let moved = ops.iter().any(|o| match o {
            Op::Push { repo, tag, .. } => !seen.insert((repo.clone(), tag.clone())),
            _ => false,
        });
        assert!(moved);
        // Only the region's own repositories.
        for t in &p.regions["b"] {
            let repo = match &t.op {
                Op::Push { repo, .. } | Op::Retag { repo, .. } | Op::Delete { repo, .. } => repo,
            };
            assert_eq!(repo, "shared/x");
        }
    }
}
