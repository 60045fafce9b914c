//! Content digests (`algorithm:hex`): the one place that parses, validates and computes them, for
//! sha256 and sha512. Digests end up in URLs, so anything else is refused before it is used.

use sha2::Digest as _;

/// A digest algorithm the engine can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn named(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// The algorithm of a digest string; sha256 (the registries' default) when it names none we
    /// know.
    pub fn of(digest: &str) -> Algorithm {
        digest
            .split_once(':')
            .and_then(|(name, _)| Algorithm::named(name))
            .unwrap_or(Algorithm::Sha256)
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid digest {digest:?}: {why}; a digest is sha256: followed by 64 lowercase hex digits (or sha512: and 128)"
)]
pub struct DigestError {
    pub digest: String,
    pub why: String,
}

/// Check that `digest` is `sha256:` + 64 or `sha512:` + 128 lowercase hex digits.
pub fn validate(digest: &str) -> Result<Algorithm, DigestError> {
    let invalid = |why: String| DigestError {
        digest: digest.to_string(),
        why,
    };
    let (name, hex) = digest
        .split_once(':')
        .ok_or_else(|| invalid("it has no algorithm".into()))?;
    let algorithm = Algorithm::named(name).ok_or_else(|| {
        invalid(format!(
            "unsupported algorithm {name:?} (sha256 and sha512 are)"
        ))
    })?;
    let length = algorithm.hex_len();
    if hex.len() != length || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(format!(
            "it must have exactly {length} lowercase hex digits after {name}:"
        )));
    }
    Ok(algorithm)
}

/// The digest of `bytes` with `algorithm`.
pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> String {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(bytes);
    hasher.finish()
}

/// The sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    compute(Algorithm::Sha256, bytes)
}

/// An incremental hash of a stream, in the algorithm of the digest it is to match.
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// A hasher in the algorithm `digest` names.
    pub fn for_digest(digest: &str) -> Hasher {
        Hasher::new(Algorithm::of(digest))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// `algorithm:hex` of everything seen; the hasher starts over.
    pub fn finish(&mut self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize_reset())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize_reset())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_validate_and_hash() {
        let d256 = sha256(b"abc");
        assert_eq!(
            d256,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(validate(&d256), Ok(Algorithm::Sha256));
        let d512 = compute(Algorithm::Sha512, b"abc");
        assert!(d512.starts_with("sha512:ddaf35a193617aba"));
        assert_eq!(validate(&d512), Ok(Algorithm::Sha512));
        assert_eq!(Algorithm::of(&d512), Algorithm::Sha512);
        let mut hasher = Hasher::for_digest(&d512);
        hasher.update(b"a");
        hasher.update(b"bc");
        assert_eq!(hasher.finish(), d512);
    }

    #[test]
    fn malformed_digests_say_why() {
        for (bad, why) in [
            ("sha256", "no algorithm"),
            ("sha256:", "64 lowercase hex"),
            ("sha256:ABC", "64 lowercase hex"),
            ("sha256:../x", "64 lowercase hex"),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                "unsupported algorithm",
            ),
            (&format!("sha512:{}", "a".repeat(64)), "128 lowercase hex"),
        ] {
            let error = validate(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
