//! Digests (`algorithm:hex`) and streaming verification.
//!
//! [`DigestVerifier`] hashes bytes as they stream past, so verifying a blob costs no memory beyond
//! the hash state whatever the blob's size.
use sha2::{Digest as _, Sha256, Sha512};

pub use oci_spec::image::Digest;
use oci_spec::image::DigestAlgorithm;

/// Computes the sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    let hex = hex::encode(Sha256::digest(bytes));
    format!("sha256:{hex}")
        .parse()
        .expect("a sha256 hex string is a valid digest")
}

/// Parses a digest string, returning `None` for anything malformed.
pub fn parse(s: &str) -> Option<Digest> {
    s.parse().ok()
}

enum State {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Incremental hasher for a digest's algorithm.
pub struct DigestVerifier {
    expected: Digest,
    state: State,
    bytes: u64,
}

impl DigestVerifier {
    /// A verifier for `expected`; `None` when its algorithm is not one we can compute.
    pub fn new(expected: &Digest) -> Option<Self> {
        let state = match expected.algorithm() {
            DigestAlgorithm::Sha256 => State::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => State::Sha512(Sha512::new()),
            _ => return None,
        };
        Some(DigestVerifier {
            expected: expected.clone(),
            state,
            bytes: 0,
        })
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        match &mut self.state {
            State::Sha256(h) => h.update(chunk),
            State::Sha512(h) => h.update(chunk),
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Ends hashing: `Ok(())` when the content matches, `Err(actual digest)` otherwise.
    pub fn finish(self) -> Result<(), String> {
        let (alg, hex) = match self.state {
            State::Sha256(h) => ("sha256", hex::encode(h.finalize())),
            State::Sha512(h) => ("sha512", hex::encode(h.finalize())),
        };
        if hex == self.expected.digest() {
            Ok(())
        } else {
            Err(format!("{alg}:{hex}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_object() {
        assert_eq!(
            sha256(b"{}").to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn verifier_accepts_and_rejects() {
        let d = sha256(b"hello world");
        let mut v = DigestVerifier::new(&d).unwrap();
        v.update(b"hello ");
        v.update(b"world");
        assert_eq!(v.len(), 11);
        assert!(v.finish().is_ok());
        let mut v = DigestVerifier::new(&d).unwrap();
        v.update(b"hello World");
        assert!(v.finish().unwrap_err().starts_with("sha256:"));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse("sha256:xyz").is_none());
        assert!(parse("nonsense").is_none());
        assert!(
            parse("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
                .is_some()
        );
    }
}
