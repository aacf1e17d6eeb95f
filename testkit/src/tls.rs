//! Throwaway TLS material made with `openssl` (Debian package `openssl`): a CA, a server leaf for
//! `127.0.0.1` and a client certificate, all signed by the CA. rustls refuses a self-signed leaf
//! used as its own trust anchor, so the CA is separate.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// PEM files in the directory given to [`make_certificates`].
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA both leaves are signed with (trust it on either side).
    pub ca: PathBuf,
    /// Server certificate with SAN `IP:127.0.0.1` (extendedKeyUsage serverAuth) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificate (CN `ferry-test-client`, extendedKeyUsage clientAuth) and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A peer's certificate for `127.0.0.1` (and `10.233.<1..9>.1`) usable both ways (serverAuth and clientAuth), as one
    /// region's agent presents on its Forward endpoint and to other regions, and its key.
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (Debian package openssl)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A P-256 key and a certificate for `subject` with `extensions`, signed by `ca.pem`/`ca.key`.
fn leaf(dir: &Path, name: &str, subject: &str, extensions: &str) -> anyhow::Result<()> {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions)?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )
}

/// Makes a CA, a server leaf for `127.0.0.1`, a client certificate and a two-way peer certificate
/// in `dir`.
pub fn make_certificates(dir: &Path) -> anyhow::Result<Certificates> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ferry-testkit-ca",
        ],
    )?;
    leaf(
        dir,
        "leaf",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    leaf(
        dir,
        "client",
        "/CN=ferry-test-client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )?;
    leaf(
        dir,
        "peer",
        "/CN=ferry-test-peer",
        &format!(
            "subjectAltName=IP:127.0.0.1,{}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
            // The root ends of the test namespaces' veth pairs (`crate::netns`), where the fault
            // proxies in front of the peers listen.
            (1..=9).map(|i| format!("IP:10.233.{i}.1")).collect::<Vec<_>>().join(",")
        ),
    )?;
    let p = |name: &str| dir.join(name);
    Ok(Certificates {
        ca: p("ca.pem"),
        cert: p("leaf.pem"),
        key: p("leaf.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        peer_cert: p("peer.pem"),
        peer_key: p("peer.key"),
    })
}
