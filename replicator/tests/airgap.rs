//! `ferry export` / `ferry import` across an air gap: a real `docker-registry` → an OCI image
//! layout (tar or directory) → another real `docker-registry`, checked independently with skopeo
//! (manifest bytes by digest, every blob re-hashed) and by reading the layout's files.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use ferry_testkit::{sha256_digest, skopeo, LayerSpec, LayoutBuilder, Registry};
use serde_json::{json, Value};

/// A port nothing listens on: the import side's config names the source registry there, so any
/// attempt to contact it fails the test.
const UNREACHABLE: &str = "http://127.0.0.1:9";

/// The export side's config (source reachable) and the import side's (only the destination
/// reachable), each in its own directory.
fn configs(dir: &Path, src: &str, dst: &str, extra: Value) -> (PathBuf, PathBuf) {
    let (e, i) = (dir.join("export-site"), dir.join("import-site"));
    std::fs::create_dir_all(&e).unwrap();
    std::fs::create_dir_all(&i).unwrap();
    (
        write_config(&e, src, UNREACHABLE, extra.clone()),
        write_config(&i, UNREACHABLE, dst, extra),
    )
}

/// Two real registries, the corpus pushed to the first, and the export and import sides' configs
/// of an unfiltered policy.
async fn corpus_sites() -> (
    Registry,
    Registry,
    tempfile::TempDir,
    Corpus,
    PathBuf,
    PathBuf,
) {
    let (src, dst, dir) = two_registries().await;
    let corpus = build_corpus(&dir.path().join("layout"));
    push_corpus(&corpus, &src.host()).await;
    let (ecfg, icfg) = configs(dir.path(), &src.url(), &dst.url(), json!({}));
    (src, dst, dir, corpus, ecfg, icfg)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

async fn export(cfg: &Path, to: &Path, since: Option<&Path>) -> Output {
    let mut args = vec![
        "export",
        "--config",
        s(cfg),
        "--policy",
        "test",
        "--to",
        s(to),
        "--progress",
        "plain",
        "--json",
    ];
    if let Some(p) = since {
        args.extend(["--since", s(p)]);
    }
    ferry(&args).await
}

async fn import(cfg: &Path, from: &Path) -> Output {
    ferry(&[
        "import",
        "--from",
        s(from),
        "--config",
        s(cfg),
        "--policy",
        "test",
        "--progress",
        "plain",
        "--json",
    ])
    .await
}

/// Every `repository:tag` of the corpus holds the source's exact manifest on `host`, and skopeo
/// pulls it with every blob re-hashing to its name.
async fn assert_corpus_on(host: &str, corpus: &Corpus) {
    for (_, repo, tag, digest) in &corpus.refs {
        let reference = format!("{repo}:{tag}");
        assert_eq!(&raw_digest(host, &reference).await, digest, "{reference}");
        assert!(
            skopeo::pull_and_verify(host, &reference).await.unwrap() >= 1,
            "{reference}"
        );
    }
}

/// The files of a tar: normalized path → content.
fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        out.insert(name, bytes);
    }
    out
}

/// The blob digests a tar holds.
fn tar_blobs(path: &Path) -> Vec<String> {
    tar_files(path)
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blobs/sha256/")
                .map(|h| format!("sha256:{h}"))
        })
        .collect()
}

/// Every file under `dir` with its size and modification time.
fn files_of(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

/// The repositories a registry lists.
async fn catalog(url: &str) -> Value {
    let bytes = reqwest::get(format!("{url}/v2/_catalog"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    body["repositories"].clone()
}

/// The digests a manifest on `host` references (config, layers, children).
async fn referenced(host: &str, reference: &str) -> Vec<String> {
    let raw = skopeo::inspect_raw(host, reference).await.unwrap();
    let m: Value = serde_json::from_slice(&raw).unwrap();
    let mut out = vec![sha256_digest(&raw)];
    for key in ["layers", "manifests", "blobs"] {
        for d in m[key].as_array().into_iter().flatten() {
            out.push(d["digest"].as_str().unwrap().to_string());
        }
    }
    if let Some(c) = m["config"]["digest"].as_str() {
        out.push(c.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_crosses_the_air_gap_in_a_tar_digest_for_digest() {
    let (_src, dst, dir, corpus, ecfg, icfg) = corpus_sites().await;
    let tar = dir.path().join("transfer.tar");

    let out = export(&ecfg, &tar, None).await;
    assert_eq!(
        out.code, 0,
        "export failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let report = &out.json()[0];
    assert_eq!(outcomes(report, "copied"), 5, "{report:#}");
    // The index names repository and tag of every entry; the signature travels as its tag.
    let index: Value = serde_json::from_slice(&tar_files(&tar)["index.json"]).unwrap();
    let named: Vec<(String, String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let a = &d["annotations"];
            (
                a["dev.ferry.repository"].as_str().unwrap().to_string(),
                a["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (_, repo, tag, digest) in &corpus.refs {
        assert!(
            named.contains(&(repo.clone(), tag.clone(), digest.clone())),
            "{repo}:{tag} missing from index.json: {index:#}"
        );
    }
    // Every blob file of the tar hashes to its name; the shared base layer is in it once.
    for (name, bytes) in tar_files(&tar) {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_digest(&bytes), format!("sha256:{hex}"), "{name}");
        }
    }
    assert!(tar_blobs(&tar).contains(&corpus.base_layer.digest));

    let out = import(&icfg, &tar).await;
    assert_eq!(
        out.code, 0,
        "import failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let report = &out.json()[0];
    assert_eq!(outcomes(report, "copied"), 5, "{report:#}");
    assert!(
        report["stats"]["blobs_mounted"].as_u64().unwrap() >= 1,
        "the shared base layer is mounted across repositories, as ferry sync does: {report:#}"
    );
    assert_corpus_on(&dst.host(), &corpus).await;
    assert_eq!(
        catalog(&dst.url()).await,
        json!([
            "platform/app",
            "platform/multi",
            "platform/tools/cli",
            "supply/sbom"
        ])
    );

    // A second import finds everything in place (HEAD) and moves nothing.
    let again = import(&icfg, &tar).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    let r = &again.json()[0];
    assert_eq!(outcomes(r, "unchanged"), 5, "{r:#}");
    assert_eq!(r["stats"]["bytes_copied"], 0, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_crosses_the_air_gap_in_a_directory() {
    let (_src, dst, dir, corpus, ecfg, icfg) = corpus_sites().await;
    let to = dir.path().join("transfer");

    let out = export(&ecfg, &to, None).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(to.join("oci-layout").is_file() && to.join("index.json").is_file());
    let out = import(&icfg, &to).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_corpus_on(&dst.host(), &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_export_of_an_unchanged_source_into_the_same_directory_writes_no_file() {
    let src = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let corpus = build_corpus(&dir.path().join("layout"));
    push_corpus(&corpus, &src.host()).await;
    let (ecfg, _) = configs(dir.path(), &src.url(), UNREACHABLE, json!({}));
    let to = dir.path().join("transfer");
    let out = export(&ecfg, &to, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = files_of(&to);

    let out = export(&ecfg, &to, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = &out.json()[0];
    assert_eq!(outcomes(report, "unchanged"), 5, "{report:#}");
    assert_eq!(report["stats"]["bytes_copied"], 0, "{report:#}");
    assert_eq!(files_of(&to), before, "no file was added or rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_tar_holds_only_the_new_tag_and_imports_onto_the_destination_that_has_the_first(
) {
    let (src, dst, dir, corpus, ecfg, icfg) = corpus_sites().await;
    let first = dir.path().join("first.tar");
    let out = export(&ecfg, &first, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let first_id = out.json()[0]["id"].as_str().unwrap().to_string();
    let out = import(&icfg, &first).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let v3 = push_image(dir.path(), 77, &src.host(), "platform/app:v3").await;
    let second = dir.path().join("second.tar");
    let out = export(&ecfg, &second, Some(&first)).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    assert_eq!(report["since"], first_id.as_str(), "{report:#}");
    assert_eq!(outcomes(report, "copied"), 1, "{report:#}");

    let mut expected = referenced(&src.host(), "platform/app:v3").await;
    expected.sort();
    expected.dedup();
    assert_eq!(
        tar_blobs(&second),
        expected,
        "the incremental tar holds the new tag's manifest, config and layer, nothing else"
    );
    let index: Value = serde_json::from_slice(&tar_files(&second)["index.json"]).unwrap();
    assert_eq!(
        index["annotations"]["dev.ferry.export.since"],
        first_id.as_str()
    );

    let out = import(&icfg, &second).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    assert_eq!(outcomes(report, "copied"), 1, "{report:#}");
    assert_eq!(outcomes(report, "unchanged"), 5, "{report:#}");
    assert_eq!(raw_digest(&dst.host(), "platform/app:v3").await, v3);
    assert!(
        skopeo::pull_and_verify(&dst.host(), "platform/app:v3")
            .await
            .unwrap()
            >= 2
    );
    assert_corpus_on(&dst.host(), &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_import_onto_a_destination_without_the_earlier_export_names_what_is_missing()
{
    let (src, dst, dir, corpus, ecfg, icfg) = corpus_sites().await;
    let first = dir.path().join("first.tar");
    let out = export(&ecfg, &first, None).await;
    let first_id = out.json()[0]["id"].as_str().unwrap().to_string();
    // v3 shares the base layer the first export carried for platform/app: the second leaves it out.
    let mut b = LayoutBuilder::new(&dir.path().join("v3")).unwrap();
    b.image(
        "v3",
        &[
            LayerSpec {
                seed: 1,
                size: 2 * 1024 * 1024,
            },
            LayerSpec {
                seed: 78,
                size: 1000,
            },
        ],
    )
    .unwrap();
    skopeo::push_layout(&b.finish().unwrap(), "v3", &src.host(), "platform/app:v3")
        .await
        .unwrap();
    let second = dir.path().join("second.tar");
    let out = export(&ecfg, &second, Some(&first)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!tar_blobs(&second).contains(&corpus.base_layer.digest));

    let out = import(&icfg, &second).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    let error_of = |tag: &str| {
        report["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["repository"] == "platform/app" && t["tag"] == tag)
            .and_then(|t| t["error"].as_str())
            .unwrap_or_else(|| panic!("{tag} did not fail: {report:#}"))
            .to_string()
    };
    // An unchanged tag: its manifest is only in the first export.
    let v1 = error_of("v1");
    assert!(
        v1.contains(&format!("manifest {}", corpus.app_v1.digest)),
        "{v1}"
    );
    assert!(
        v1.contains(&first_id),
        "names the export to import first: {v1}"
    );
    // The new tag: its manifest is here, its shared layer only in the first export.
    let v3 = error_of("v3");
    assert!(
        v3.contains(&format!("blob {}", corpus.base_layer.digest)),
        "{v3}"
    );
    assert!(
        v3.contains(&first_id),
        "names the export to import first: {v3}"
    );
    for tag in ["v1", "v3"] {
        assert_eq!(
            manifest_status(&dst.url(), "platform/app", tag).await,
            404,
            "{tag} was not tagged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_layout_blob_is_refused_naming_it() {
    let (_src, dst, dir, corpus, ecfg, icfg) = corpus_sites().await;
    let to = dir.path().join("transfer");
    let out = export(&ecfg, &to, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let blob = to
        .join("blobs/sha256")
        .join(corpus.base_layer.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();

    let out = import(&icfg, &to).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    let v1 = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["repository"] == "platform/app" && t["tag"] == "v1")
        .unwrap();
    assert_eq!(v1["outcome"], "failed", "{report:#}");
    let error = v1["error"].as_str().unwrap();
    let hex = corpus.base_layer.digest.trim_start_matches("sha256:");
    assert!(
        error.contains(&format!("blobs/sha256/{hex}")) && error.contains("altered"),
        "names the tampered file: {error}"
    );
    assert_eq!(
        manifest_status(&dst.url(), "platform/app", "v1").await,
        404,
        "the tag whose layer was tampered with is not pushed"
    );
    // Content that does not depend on the tampered blob still crosses.
    assert_eq!(
        raw_digest(&dst.host(), "platform/multi:1.0").await,
        corpus
            .refs
            .iter()
            .find(|r| r.1 == "platform/multi")
            .unwrap()
            .3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_layout_manifest_is_refused_naming_its_file() {
    let (_src, dst, dir, corpus, ecfg, icfg) = corpus_sites().await;
    let to = dir.path().join("transfer");
    assert_eq!(export(&ecfg, &to, None).await.code, 0);
    let hex = corpus.app_v1.digest.trim_start_matches("sha256:");
    let file = to.join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&file).unwrap();
    // A space for a newline keeps the JSON valid: only the hash tells.
    let at = bytes.iter().position(|b| *b == b' ' || *b == b',').unwrap();
    bytes.insert(at + 1, b' ');
    std::fs::write(&file, bytes).unwrap();

    let out = import(&icfg, &to).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("blobs/sha256/{hex}")) && out.stdout.contains("altered"),
        "{}",
        out.stdout
    );
    assert_eq!(manifest_status(&dst.url(), "platform/app", "v1").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_with_a_path_traversal_entry_is_refused_and_nothing_is_written() {
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, icfg) = configs(dir.path(), UNREACHABLE, &dst.url(), json!({}));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tar_path = work.join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut add = |name: &[u8], body: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // `append_data` refuses `..` itself: a hostile tool writes the name directly.
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, body).unwrap();
        };
        add(b"oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add(b"index.json", br#"{"schemaVersion":2,"manifests":[]}"#);
        add(b"../escaped.txt", b"owned");
        b.finish().unwrap();
    }

    let out = import(&icfg, &tar_path).await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("../escaped.txt") && out.stderr.contains("leaves the layout"),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("escaped.txt").exists());
    assert_eq!(
        catalog(&dst.url()).await,
        json!([]),
        "nothing reached the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_with_bad_json_is_refused_with_a_clear_error() {
    let dst = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, icfg) = configs(dir.path(), UNREACHABLE, &dst.url(), json!({}));
    let layout = dir.path().join("bad");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": [",
    )
    .unwrap();
    let out = import(&icfg, &layout).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("index.json"), "{}", out.stderr);
}

/// A signed image (`team/app:v1`, cosign signature by `signer` under its `.sig` tag) and an
/// unsigned one (`team/app:v2`) on `src`; returns their digests.
async fn signed_and_unsigned(
    dir: &Path,
    src: &Registry,
    signer: &ferry_testkit::cosign::Signer,
) -> (String, String) {
    use ferry_testkit::cosign::signature_manifest;
    let mut b = LayoutBuilder::new(&dir.join("gated")).unwrap();
    let signed = b
        .image(
            "signed",
            &[LayerSpec {
                seed: 90,
                size: 4096,
            }],
        )
        .unwrap();
    let unsigned = b
        .image(
            "unsigned",
            &[LayerSpec {
                seed: 91,
                size: 4096,
            }],
        )
        .unwrap();
    let sig = signer
        .sign(&format!("{}/team/app", src.host()), &signed.digest)
        .unwrap();
    signature_manifest(&mut b, "sig", &[sig], None).unwrap();
    let layout = b.finish().unwrap();
    let sig_tag = format!("team/app:sha256-{}.sig", signed.hex());
    for (r, reference) in [
        ("signed", "team/app:v1"),
        ("unsigned", "team/app:v2"),
        ("sig", sig_tag.as_str()),
    ] {
        skopeo::push_layout(&layout, r, &src.host(), reference)
            .await
            .unwrap();
    }
    (signed.digest, unsigned.digest)
}

/// The outcome of `tag` in an export or import report.
fn outcome_of<'a>(report: &'a Value, tag: &str) -> &'a Value {
    report["tags"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tag"] == tag))
        .map(|t| &t["outcome"])
        .unwrap_or_else(|| panic!("no result for {tag}: {report:#}"))
}

/// `only_signed` with a key on both sides: the export leaves the unsigned image out (blocked), and
/// the import verifies the signature the layout carries before it copies the signed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_images_cross_the_air_gap_and_the_import_verifies_them_from_the_layout() {
    let (src, dst, dir) = two_registries().await;
    let signer = ferry_testkit::cosign::Signer::generate().unwrap();
    let (signed, _) = signed_and_unsigned(dir.path(), &src, &signer).await;
    let key = signer.write_public_key(dir.path(), "cosign.pub").unwrap();
    let gate = json!({"only_signed": true, "signature_public_key_file": key});
    let (ecfg, icfg) = configs(dir.path(), &src.url(), &dst.url(), gate);
    let tar = dir.path().join("signed.tar");

    let out = export(&ecfg, &tar, None).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    assert_eq!(outcome_of(report, "v1"), "copied", "{report:#}");
    assert_eq!(outcome_of(report, "v2"), "blocked", "{report:#}");

    let out = import(&icfg, &tar).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    assert_eq!(outcome_of(report, "v1"), "copied", "{report:#}");
    assert_eq!(raw_digest(&dst.host(), "team/app:v1").await, signed);
    assert_eq!(manifest_status(&dst.url(), "team/app", "v2").await, 404);
}

/// The import judges the layout itself: a site that trusts another key lets nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_trusting_another_key_blocks_what_the_layout_carries() {
    let (src, dst, dir) = two_registries().await;
    let signer = ferry_testkit::cosign::Signer::generate().unwrap();
    signed_and_unsigned(dir.path(), &src, &signer).await;
    let (ecfg, _) = configs(dir.path(), &src.url(), &dst.url(), json!({}));
    let tar = dir.path().join("all.tar");
    let out = export(&ecfg, &tar, None).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let other = ferry_testkit::cosign::Signer::generate().unwrap();
    let key = other.write_public_key(dir.path(), "other.pub").unwrap();
    let gate = json!({"only_signed": true, "signature_public_key_file": key});
    let (_, icfg) = configs(&dir.path().join("strict"), &src.url(), &dst.url(), gate);
    let out = import(&icfg, &tar).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = &out.json()[0];
    assert_eq!(outcome_of(report, "v1"), "blocked", "{report:#}");
    assert_eq!(outcome_of(report, "v2"), "blocked", "{report:#}");
    assert_eq!(manifest_status(&dst.url(), "team/app", "v1").await, 404);
}
