//! Manifests as exact bytes, plus the edges of the content graph parsed out of them.
//!
//! A [`Manifest`] is immutable: its `bytes` are what the registry served and what will be pushed,
//! and `digest` is the hash of those bytes. Parsing ([`Manifest::graph`]) only reads; it never
//! produces bytes to send. Descriptor sizes beyond the spec's `int64` range are refused when the
//! graph is parsed, so no size a registry writes into a manifest reaches transfer arithmetic or a
//! `Content-Length` unchecked.
use bytes::Bytes;
use oci_spec::image::{ArtifactManifest, Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Every manifest media type Ferry asks for (`Accept`), most preferred first.
pub const ACCEPT: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_ARTIFACT,
];

/// Config media types that make a manifest a runnable image (the `resource: image` filter).
pub const IMAGE_CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Largest manifest accepted (the distribution spec's recommended limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Layers that must not be pushed to another registry (foreign / non-distributable).
pub fn is_non_distributable(desc: &Descriptor) -> bool {
    let mt = desc.media_type().to_string();
    mt.contains(".foreign.") || mt.contains(".nondistributable.")
}

/// A manifest exactly as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// A child manifest of an index, with its platform when the index gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub descriptor: Descriptor,
    /// `(os, architecture, variant)`.
    pub platform: Option<(String, String, Option<String>)>,
}

/// The outgoing edges of one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestGraph {
    /// OCI index or Docker manifest list.
    Index {
        children: Vec<Child>,
        subject: Option<Descriptor>,
    },
    /// Image or artifact manifest: `blobs` are the config (first, when present) and the layers.
    Image {
        blobs: Vec<Descriptor>,
        config_media_type: Option<String>,
        subject: Option<Descriptor>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest media type {0} is not supported (Docker schema 1 is deprecated; convert it to schema 2 at the source)")]
    Unsupported(String),
    #[error("manifest is not valid {media_type}: {message}")]
    Malformed { media_type: String, message: String },
}

/// Just enough of any manifest to learn its own `mediaType` when the registry's Content-Type is
/// generic.
#[derive(Deserialize)]
struct Sniff {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    blobs: Option<serde_json::Value>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
}

/// Decides the media type of a manifest from the Content-Type the registry sent and the body.
pub fn effective_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    match ct {
        Some(c)
            if !c.is_empty()
                && c != "application/json"
                && c != "text/plain"
                && c != "application/octet-stream" =>
        {
            c
        }
        _ => match serde_json::from_slice::<Sniff>(bytes) {
            Ok(s) => match s.media_type {
                Some(m) => m,
                None if s.schema_version == Some(1) => DOCKER_SCHEMA1.to_string(),
                None if s.manifests.is_some() => OCI_INDEX.to_string(),
                None if s.blobs.is_some() && s.config.is_none() => OCI_ARTIFACT.to_string(),
                None => OCI_MANIFEST.to_string(),
            },
            Err(_) => ct.unwrap_or_default(),
        },
    }
}

fn malformed(media_type: &str, e: impl std::fmt::Display) -> ManifestError {
    ManifestError::Malformed {
        media_type: media_type.to_string(),
        message: e.to_string(),
    }
}

impl Manifest {
    /// The OCI 1.1 artifact type: `artifactType`, else (image manifests) the config media type;
    /// `None` for indexes without one and for unparsable bytes.
    pub fn artifact_type(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Typed {
            #[serde(rename = "artifactType", default)]
            artifact_type: Option<String>,
            #[serde(default)]
            config: Option<TypedConfig>,
        }
        #[derive(Deserialize)]
        struct TypedConfig {
            #[serde(rename = "mediaType", default)]
            media_type: Option<String>,
        }
        let t: Typed = serde_json::from_slice(&self.bytes).ok()?;
        t.artifact_type
            .or_else(|| t.config.and_then(|c| c.media_type))
    }

    /// Parses the edges of this manifest's graph; every descriptor's size must be within the OCI
    /// spec's `int64` range.
    pub fn graph(&self) -> Result<ManifestGraph, ManifestError> {
        let graph = self.edges()?;
        let (descriptors, subject) = match &graph {
            ManifestGraph::Index { children, subject } => (
                children.iter().map(|c| &c.descriptor).collect::<Vec<_>>(),
                subject,
            ),
            ManifestGraph::Image { blobs, subject, .. } => (blobs.iter().collect(), subject),
        };
        let too_large = descriptors
            .into_iter()
            .chain(subject)
            .find(|d| i64::try_from(d.size()).is_err());
        if let Some(d) = too_large {
            return Err(malformed(
                &self.media_type,
                format!(
                    "descriptor {} has size {}, beyond the spec's int64 range",
                    d.digest(),
                    d.size()
                ),
            ));
        }
        Ok(graph)
    }

    fn edges(&self) -> Result<ManifestGraph, ManifestError> {
        let mt = self.media_type.as_str();
        match mt {
            OCI_INDEX | DOCKER_LIST => {
                let index: ImageIndex =
                    serde_json::from_slice(&self.bytes).map_err(|e| malformed(mt, e))?;
                let children = index
                    .manifests()
                    .iter()
                    .map(|d| Child {
                        descriptor: d.clone(),
                        platform: d.platform().as_ref().map(|p| {
                            (
                                p.os().to_string(),
                                p.architecture().to_string(),
                                p.variant().clone(),
                            )
                        }),
                    })
                    .collect();
                Ok(ManifestGraph::Index {
                    children,
                    subject: index.subject().clone(),
                })
            }
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let m: ImageManifest =
                    serde_json::from_slice(&self.bytes).map_err(|e| malformed(mt, e))?;
                let mut blobs = Vec::with_capacity(m.layers().len() + 1);
                blobs.push(m.config().clone());
                blobs.extend(m.layers().iter().cloned());
                Ok(ManifestGraph::Image {
                    blobs,
                    config_media_type: Some(m.config().media_type().to_string()),
                    subject: m.subject().clone(),
                })
            }
            OCI_ARTIFACT => {
                let m: ArtifactManifest =
                    serde_json::from_slice(&self.bytes).map_err(|e| malformed(mt, e))?;
                Ok(ManifestGraph::Image {
                    blobs: m.blobs().clone(),
                    config_media_type: None,
                    subject: m.subject().clone(),
                })
            }
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => {
                Err(ManifestError::Unsupported(mt.to_string()))
            }
            other => Err(ManifestError::Unsupported(other.to_string())),
        }
    }
}

impl ManifestGraph {
    /// True for a runnable image (or an index of them); false for artifacts (SBOMs, signatures…).
    pub fn is_image(&self) -> bool {
        match self {
            ManifestGraph::Index { .. } => true,
            ManifestGraph::Image {
                config_media_type, ..
            } => config_media_type
                .as_deref()
                .is_some_and(|c| IMAGE_CONFIG_TYPES.contains(&c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::sha256;

    fn manifest(media_type: &str, json: &str) -> Manifest {
        Manifest {
            media_type: media_type.into(),
            digest: sha256(json.as_bytes()),
            bytes: Bytes::from(json.to_string()),
        }
    }

    const D1: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const D2: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn image_graph_lists_config_then_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":5}}]}}"#
        );
        let g = manifest(OCI_MANIFEST, &json).graph().unwrap();
        let ManifestGraph::Image { blobs, .. } = &g else {
            panic!("{g:?}")
        };
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].digest().to_string(), D1);
        assert!(g.is_image());
    }

    #[test]
    fn index_graph_keeps_platforms() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let g = manifest(DOCKER_LIST, &json).graph().unwrap();
        let ManifestGraph::Index { children, .. } = g else {
            panic!()
        };
        assert_eq!(
            children[0].platform,
            Some(("linux".into(), "arm64".into(), Some("v8".into())))
        );
    }

    #[test]
    fn artifact_type_is_artifact_type_else_config_media_type() {
        let m = |json: &str| Manifest {
            media_type: OCI_MANIFEST.into(),
            digest: sha256(json.as_bytes()),
            bytes: Bytes::from(json.to_string()),
        };
        assert_eq!(
            m(r#"{"artifactType":"application/spdx+json","config":{"mediaType":"application/vnd.oci.empty.v1+json"}}"#)
                .artifact_type()
                .as_deref(),
            Some("application/spdx+json")
        );
        assert_eq!(
            m(r#"{"config":{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}}"#)
                .artifact_type()
                .as_deref(),
            Some("application/vnd.dev.cosign.simplesigning.v1+json")
        );
        assert_eq!(m(r#"{"manifests":[]}"#).artifact_type(), None);
        assert_eq!(m("not json").artifact_type(), None);
    }

    #[test]
    fn artifact_with_empty_config_is_not_an_image() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sbom","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{D1}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":9}}}}"#
        );
        let g = manifest(OCI_MANIFEST, &json).graph().unwrap();
        assert!(!g.is_image());
        let ManifestGraph::Image { subject, .. } = g else {
            panic!()
        };
        assert_eq!(subject.unwrap().digest().to_string(), D2);
    }

    #[test]
    fn malformed_and_unsupported_are_errors_not_panics() {
        assert!(matches!(
            manifest(OCI_MANIFEST, "{").graph(),
            Err(ManifestError::Malformed { .. })
        ));
        assert!(matches!(
            manifest(OCI_INDEX, r#"{"manifests":"x"}"#).graph(),
            Err(ManifestError::Malformed { .. })
        ));
        assert!(matches!(
            manifest(DOCKER_SCHEMA1_SIGNED, "{}").graph(),
            Err(ManifestError::Unsupported(_))
        ));
        assert!(matches!(
            manifest("text/html", "{}").graph(),
            Err(ManifestError::Unsupported(_))
        ));
    }

    #[test]
    fn a_descriptor_size_beyond_int64_is_malformed() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":18446744073709551615}}]}}"#
        );
        match manifest(OCI_MANIFEST, &json).graph() {
            Err(e @ ManifestError::Malformed { .. }) => {
                let s = e.to_string();
                assert!(s.contains(D2) && s.contains("18446744073709551615"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        let json = json.replace("18446744073709551615", "9223372036854775807");
        assert!(
            manifest(OCI_MANIFEST, &json).graph().is_ok(),
            "int64::MAX is allowed"
        );
    }

    #[test]
    fn media_type_from_body_when_content_type_is_generic() {
        assert_eq!(
            effective_media_type(Some("application/json"), br#"{"mediaType":"x/y"}"#),
            "x/y"
        );
        assert_eq!(
            effective_media_type(None, br#"{"schemaVersion":2,"manifests":[]}"#),
            OCI_INDEX
        );
        assert_eq!(
            effective_media_type(Some(&format!("{OCI_MANIFEST}; charset=utf-8")), b"{}"),
            OCI_MANIFEST
        );
    }
}
