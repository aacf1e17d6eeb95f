//! `ferry-sample DIR`: writes a small OCI image layout for demos — `app:v1` and `app:v2` sharing a
//! base layer, a two-platform index `multi:1.0` and a signature of it (`multi-sig`) — that `skopeo
//! copy --all` can push.
use anyhow::{Context, Result};
use ferry_testkit::{LayerSpec, LayoutBuilder};

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).context("usage: ferry-sample DIR")?;
    let mut b = LayoutBuilder::new(std::path::Path::new(&dir))?;
    let base = LayerSpec {
        seed: 1,
        size: 8 * 1024 * 1024,
    };
    b.image(
        "app-v1",
        &[
            base,
            LayerSpec {
                seed: 2,
                size: 512 * 1024,
            },
        ],
    )?;
    b.image(
        "app-v2",
        &[
            base,
            LayerSpec {
                seed: 3,
                size: 256 * 1024,
            },
        ],
    )?;
    let amd = b.image_for_platform(
        "linux",
        "amd64",
        None,
        &[LayerSpec {
            seed: 4,
            size: 1024 * 1024,
        }],
    )?;
    let arm = b.image_for_platform(
        "linux",
        "arm64",
        Some("v8"),
        &[LayerSpec {
            seed: 5,
            size: 1024 * 1024,
        }],
    )?;
    let multi = b.index(
        "multi",
        &[
            (amd, "linux", "amd64", None),
            (arm, "linux", "arm64", Some("v8")),
        ],
    )?;
    // A signature of the index (an OCI 1.1 artifact whose subject is the index), as a signing
    // tool would push it; registries without the referrers API list it under the subject's
    // `sha256-<hex>.sig` tag.
    b.artifact(
        "multi-sig",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        br#"{"critical":{"type":"ferry sample signature"}}"#,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        Some(&multi),
    )?;
    let path = b.finish()?;
    println!("{}", path.display());
    Ok(())
}
