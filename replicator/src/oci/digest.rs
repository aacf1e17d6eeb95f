//! Digests (`algorithm:hex`) and streaming verification.
//!
//! [`DigestVerifier`] hashes bytes as they stream past, so verifying a blob costs no memory beyond
//! the hash state whatever the blob's size. The state can be saved ([`DigestVerifier::save`]) and
//! resumed ([`DigestVerifier::resume`]): a chunked upload saves it with every chunk the destination
//! confirmed, so whoever continues the upload (another worker, after a crash) hashes only the bytes
//! it still sends and the final check still covers the whole blob, without re-reading the prefix.
//!
//! SHA-2 runs on the `sha2` crate's block functions (the same hardware-accelerated code as
//! `sha2::Sha256`; blocks are batched so the per-call cost stays negligible); the message padding
//! is done here (FIPS 180-4 §5.1), and the unit tests pin the results to `sha2`'s own hashers.
use sha2::digest::consts::{U128, U64};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

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

const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const SHA512_IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// Blocks handed to the block function per call.
const BATCH: usize = 64;

/// Version tag of [`DigestVerifier::save`]'s format.
const SAVE_VERSION: &str = "v1";

/// The chaining value of a SHA-2 computation (whole blocks only).
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Sha256([u32; 8]),
    Sha512([u64; 8]),
}

impl State {
    fn block_len(&self) -> usize {
        match self {
            State::Sha256(_) => 64,
            State::Sha512(_) => 128,
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            State::Sha256(_) => "sha256",
            State::Sha512(_) => "sha512",
        }
    }

    /// Hashes `blocks`, whose length is a multiple of the block length.
    fn compress(&mut self, blocks: &[u8]) {
        debug_assert_eq!(blocks.len() % self.block_len(), 0);
        match self {
            State::Sha256(h) => {
                let mut batch = [GenericArray::<u8, U64>::default(); BATCH];
                for group in blocks.chunks(64 * BATCH) {
                    let n = group.len() / 64;
                    for (dst, src) in batch.iter_mut().zip(group.chunks_exact(64)) {
                        dst.copy_from_slice(src);
                    }
                    sha2::compress256(h, &batch[..n]);
                }
            }
            State::Sha512(h) => {
                let mut batch = [GenericArray::<u8, U128>::default(); BATCH];
                for group in blocks.chunks(128 * BATCH) {
                    let n = group.len() / 128;
                    for (dst, src) in batch.iter_mut().zip(group.chunks_exact(128)) {
                        dst.copy_from_slice(src);
                    }
                    sha2::compress512(h, &batch[..n]);
                }
            }
        }
    }

    /// The chaining value as big-endian hex (the digest itself once the padding was hashed).
    fn hex(&self) -> String {
        match self {
            State::Sha256(h) => h.iter().map(|w| format!("{w:08x}")).collect(),
            State::Sha512(h) => h.iter().map(|w| format!("{w:016x}")).collect(),
        }
    }
}

/// Incremental hasher for a digest's algorithm; its state can be saved and resumed.
#[derive(Clone, Debug)]
pub struct DigestVerifier {
    expected: Digest,
    state: State,
    /// The bytes of the current, incomplete block (always shorter than a block).
    pending: Vec<u8>,
    bytes: u64,
}

impl DigestVerifier {
    /// A verifier for `expected`; `None` when its algorithm is not one we can compute.
    pub fn new(expected: &Digest) -> Option<Self> {
        let state = match expected.algorithm() {
            DigestAlgorithm::Sha256 => State::Sha256(SHA256_IV),
            DigestAlgorithm::Sha512 => State::Sha512(SHA512_IV),
            _ => return None,
        };
        Some(DigestVerifier {
            expected: expected.clone(),
            pending: Vec::with_capacity(state.block_len()),
            state,
            bytes: 0,
        })
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let block = self.state.block_len();
        let mut data = chunk;
        if !self.pending.is_empty() {
            let take = (block - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < block {
                return;
            }
            self.state.compress(&self.pending);
            self.pending.clear();
        }
        let whole = data.len() - data.len() % block;
        self.state.compress(&data[..whole]);
        self.pending.extend_from_slice(&data[whole..]);
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The digest of the bytes seen so far (`algorithm:hex`); hashing can go on afterwards.
    pub fn current(&self) -> String {
        let mut state = self.state.clone();
        let mut tail = self.pending.clone();
        tail.push(0x80);
        let bits = u128::from(self.bytes) * 8;
        match state {
            State::Sha256(_) => {
                while tail.len() % 64 != 56 {
                    tail.push(0);
                }
                // The length field is the message length in bits modulo 2^64.
                tail.extend_from_slice(&(bits as u64).to_be_bytes());
            }
            State::Sha512(_) => {
                while tail.len() % 128 != 112 {
                    tail.push(0);
                }
                tail.extend_from_slice(&bits.to_be_bytes());
            }
        }
        state.compress(&tail);
        format!("{}:{}", state.algorithm(), state.hex())
    }

    /// Ends hashing: `Ok(())` when the content matches, `Err(actual digest)` otherwise.
    pub fn finish(self) -> Result<(), String> {
        let actual = self.current();
        match actual.split_once(':') {
            Some((_, hex)) if hex == self.expected.digest() => Ok(()),
            _ => Err(actual),
        }
    }

    /// The hash state as text, `v1;<algorithm>;<bytes>;<chaining value hex>;<pending bytes hex>`
    /// (at most a few hundred characters), for [`DigestVerifier::resume`].
    pub fn save(&self) -> String {
        format!(
            "{SAVE_VERSION};{};{};{};{}",
            self.state.algorithm(),
            self.bytes,
            self.state.hex(),
            hex::encode(&self.pending)
        )
    }

    /// A verifier for `expected` that continues from a state [`DigestVerifier::save`] wrote.
    /// `Err` says why `saved` is unusable (another algorithm, malformed, inconsistent).
    pub fn resume(expected: &Digest, saved: &str) -> Result<Self, String> {
        let mut v = DigestVerifier::new(expected)
            .ok_or_else(|| format!("digest algorithm {} not supported", expected.algorithm()))?;
        let parts: Vec<&str> = saved.split(';').collect();
        let [version, algorithm, bytes, words, pending] = parts[..] else {
            return Err(format!(
                "expected 5 fields separated by ';', found {}",
                parts.len()
            ));
        };
        if version != SAVE_VERSION {
            return Err(format!("unknown hash state version {version:?}"));
        }
        if algorithm != v.state.algorithm() {
            return Err(format!(
                "hash state is {algorithm:?}, the digest is {}",
                v.state.algorithm()
            ));
        }
        let bytes: u64 = bytes
            .parse()
            .map_err(|_| format!("byte count {bytes:?} is not a number"))?;
        let words = hex::decode(words).map_err(|e| format!("chaining value: {e}"))?;
        let pending = hex::decode(pending).map_err(|e| format!("pending bytes: {e}"))?;
        match &mut v.state {
            State::Sha256(h) if words.len() == 32 => {
                for (w, b) in h.iter_mut().zip(words.chunks_exact(4)) {
                    *w = u32::from_be_bytes(b.try_into().expect("chunks of 4"));
                }
            }
            State::Sha512(h) if words.len() == 64 => {
                for (w, b) in h.iter_mut().zip(words.chunks_exact(8)) {
                    *w = u64::from_be_bytes(b.try_into().expect("chunks of 8"));
                }
            }
            _ => return Err(format!("chaining value has {} bytes", words.len())),
        }
        let block = v.state.block_len() as u64;
        if pending.len() as u64 != bytes % block {
            return Err(format!(
                "{} pending bytes do not fit a count of {bytes}",
                pending.len()
            ));
        }
        v.pending = pending;
        v.bytes = bytes;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Sha512;

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

    /// Deterministic, non-repeating test bytes.
    fn data(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn sha512_digest(bytes: &[u8]) -> Digest {
        format!("sha512:{}", hex::encode(Sha512::digest(bytes)))
            .parse()
            .unwrap()
    }

    /// Lengths around every padding edge of both block sizes, and a few large ones.
    const LENGTHS: &[usize] = &[
        0, 1, 3, 55, 56, 57, 63, 64, 65, 111, 112, 113, 119, 120, 127, 128, 129, 1000, 4096, 8191,
        70_000, 300_001,
    ];

    #[test]
    fn matches_the_sha2_hashers_at_every_padding_edge() {
        for &n in LENGTHS {
            let bytes = data(n);
            for (expected, std) in [
                (
                    sha256(&bytes),
                    format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
                ),
                (
                    sha512_digest(&bytes),
                    format!("sha512:{}", hex::encode(Sha512::digest(&bytes))),
                ),
            ] {
                // Odd piece sizes cross block boundaries in every way.
                for piece in [1, 7, 64, 127, 4099] {
                    let mut v = DigestVerifier::new(&expected).unwrap();
                    for p in bytes.chunks(piece) {
                        v.update(p);
                    }
                    assert_eq!(v.current(), std, "{n} bytes in pieces of {piece}");
                    assert!(v.finish().is_ok());
                }
            }
        }
    }

    #[test]
    fn a_saved_state_resumes_to_the_same_digest() {
        let bytes = data(300_001);
        for expected in [sha256(&bytes), sha512_digest(&bytes)] {
            for split in [
                0, 1, 63, 64, 65, 128, 129, 65_536, 100_003, 300_000, 300_001,
            ] {
                let mut first = DigestVerifier::new(&expected).unwrap();
                first.update(&bytes[..split]);
                let saved = first.save();
                let mut resumed = DigestVerifier::resume(&expected, &saved)
                    .unwrap_or_else(|e| panic!("resume at {split}: {e}"));
                assert_eq!(resumed.len(), split as u64);
                assert_eq!(resumed.save(), saved, "round trip at {split}");
                resumed.update(&bytes[split..]);
                assert_eq!(resumed.finish(), Ok(()), "{expected} split at {split}");
            }
        }
    }

    #[test]
    fn a_resumed_state_still_catches_wrong_bytes() {
        let bytes = data(200_000);
        let expected = sha256(&bytes);
        let mut first = DigestVerifier::new(&expected).unwrap();
        first.update(&bytes[..65_536]);
        let mut resumed = DigestVerifier::resume(&expected, &first.save()).unwrap();
        let mut rest = bytes[65_536..].to_vec();
        rest[10] ^= 1;
        resumed.update(&rest);
        assert!(resumed.finish().unwrap_err().starts_with("sha256:"));
    }

    #[test]
    fn unusable_saved_states_are_refused_with_a_reason() {
        let bytes = data(1000);
        let d256 = sha256(&bytes);
        let mut v = DigestVerifier::new(&d256).unwrap();
        v.update(&bytes[..100]);
        let good = v.save();
        assert!(good.starts_with("v1;sha256;100;"), "{good}");
        let fields: Vec<&str> = good.split(';').collect();
        let with = |i: usize, value: &str| {
            let mut f = fields.clone();
            f[i] = value;
            f.join(";")
        };
        let cases = [
            (String::new(), "5 fields"),
            ("garbage".to_string(), "5 fields"),
            (with(0, "v9"), "version"),
            (with(1, "sha512"), "\"sha512\""),
            (with(2, "-1"), "not a number"),
            (with(2, "101"), "do not fit"),
            (with(3, "abc"), "chaining value"),
            (with(3, &fields[3][..62]), "chaining value has 31 bytes"),
            (with(4, "zz"), "pending bytes"),
            (with(4, ""), "do not fit"),
        ];
        for (saved, reason) in cases {
            match DigestVerifier::resume(&d256, &saved) {
                Err(e) => assert!(e.contains(reason), "{saved:?}: {e} (wanted {reason:?})"),
                Ok(_) => panic!("{saved:?} was accepted"),
            }
        }
        // A sha256 state never resumes a sha512 digest.
        assert!(DigestVerifier::resume(&sha512_digest(&bytes), &good)
            .unwrap_err()
            .contains("\"sha256\""));
    }
}
