//! Manifest and index bytes as a registry returns them, under every media type Ferry reads:
//! walking the graph, reading the artifact type and the image check never panic.
#![no_main]
use ferry_replicator::oci::Manifest;
use libfuzzer_sys::fuzz_target;
use sha2::Digest as _;

const MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/json",
];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, bytes)) = input.split_first() else {
        return;
    };
    let media_type = match MEDIA_TYPES.get(usize::from(selector)) {
        Some(m) => m.to_string(),
        None => ferry_replicator::oci::manifest::effective_media_type(None, bytes),
    };
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    let Some(digest) = ferry_replicator::oci::digest::parse(&format!("sha256:{hex}")) else {
        panic!("a sha256 digest of our own making does not parse");
    };
    let manifest = Manifest {
        media_type,
        digest,
        bytes: bytes::Bytes::copy_from_slice(bytes),
    };
    let _ = manifest.artifact_type();
    if let Ok(graph) = manifest.graph() {
        let _ = graph.is_image();
    }
});
