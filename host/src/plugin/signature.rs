//! Trusted components: with `plugins.trusted_keys` configured, a component runs only if it
//! carries an Ed25519 signature by one of those keys over its content hash.
//!
//! The content hash is the SHA-256 of the component with its [`SECTION`] sections removed, so the
//! signature can travel inside the component (a custom section named [`SECTION`] whose payload is
//! the 64-byte signature; `weir plugin build --sign KEY` writes it) or beside it in a side file
//! `<file>.sig` holding the signature in base64 (for the plugins directory). An upload must carry
//! it inside. Keys, signatures and private key files are base64 text.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use super::package::{embed_section, section_payloads, without_section};

/// The custom section that holds a signature.
pub const SECTION: &str = "weir-signature";

/// Why a component is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// It carries no signature, inside or beside it.
    #[error(
        "it is not signed (plugins.trusted_keys is set: sign it with `weir plugin build --sign KEY`)"
    )]
    Unsigned,
    /// Its signature cannot be read.
    #[error("its signature is malformed: {0}")]
    Malformed(String),
    /// Its signature is by none of the trusted keys, or is not over this content.
    #[error("its signature is not by a trusted key (or the component was changed after signing)")]
    NotTrusted,
}

/// The public keys components must be signed by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<[u8; 32]>,
}

impl TrustedKeys {
    /// Keys in base64 (32 bytes each), or the first that cannot be read (its index and why).
    pub fn parse(keys: &[String]) -> Result<TrustedKeys, (usize, String)> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(index, key)| public_key(key).map_err(|reason| (index, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedKeys { keys })
    }

    /// Whether no key is configured (then every component is run, as without this feature).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `bytes` carry a signature (inside, else `side`: the text of a side file) by one of
    /// the keys over their content hash. Always `Ok` without keys.
    pub fn verify(&self, bytes: &[u8], side: Option<&str>) -> Result<(), Untrusted> {
        if self.is_empty() {
            return Ok(());
        }
        let signature = signature_of(bytes, side)?;
        let digest = content_hash(bytes)?;
        let trusted = self.keys.iter().any(|key| {
            UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(&digest, &signature)
                .is_ok()
        });
        if trusted {
            Ok(())
        } else {
            Err(Untrusted::NotTrusted)
        }
    }
}

/// A base64 public key.
fn public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "expected 32 bytes (an Ed25519 public key), found {}",
            bytes.len()
        )
    })
}

/// The SHA-256 of `bytes` without their signature sections.
pub fn content_hash(bytes: &[u8]) -> Result<[u8; 32], Untrusted> {
    let unsigned = without_section(bytes, SECTION)
        .ok_or_else(|| Untrusted::Malformed("the file is not a WebAssembly binary".into()))?;
    Ok(Sha256::digest(&unsigned).into())
}

/// The signature inside `bytes`, else the one in `side`.
fn signature_of(bytes: &[u8], side: Option<&str>) -> Result<Vec<u8>, Untrusted> {
    let inside = section_payloads(bytes, SECTION)
        .ok_or_else(|| Untrusted::Malformed("the file is not a WebAssembly binary".into()))?;
    let signature = match (inside.as_slice(), side) {
        ([one], _) => one.to_vec(),
        ([], Some(text)) => STANDARD
            .decode(text.trim())
            .map_err(|e| Untrusted::Malformed(format!("the side file is not base64: {e}")))?,
        ([], None) => return Err(Untrusted::Unsigned),
        (_, _) => {
            return Err(Untrusted::Malformed(format!(
                "{} `{SECTION}` sections",
                inside.len()
            )));
        }
    };
    if signature.len() != 64 {
        return Err(Untrusted::Malformed(format!(
            "expected 64 bytes, found {}",
            signature.len()
        )));
    }
    Ok(signature)
}

/// The side file of a plugin file: `<file>.sig`.
pub fn side_file(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sig");
    std::path::PathBuf::from(name)
}

/// The text of `path`'s side file, if it has one.
pub fn read_side_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(side_file(path)).ok()
}

/// A new key pair: the private key (PKCS#8, base64) and the public key (base64).
pub fn generate() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| format!("key generation: {e}"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| format!("key: {e}"))?;
    Ok((
        STANDARD.encode(pkcs8.as_ref()),
        STANDARD.encode(pair.public_key().as_ref()),
    ))
}

/// Signs `bytes` with the private key `private` (PKCS#8, base64): the component with its
/// signature section (replacing any earlier one), and the public key that checks it.
pub fn sign(bytes: &[u8], private: &str) -> Result<(Vec<u8>, String), String> {
    let pkcs8 = STANDARD
        .decode(private.trim())
        .map_err(|e| format!("the key file is not base64: {e}"))?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
        .map_err(|e| format!("the key file is not an Ed25519 private key: {e}"))?;
    let digest = content_hash(bytes).map_err(|e| e.to_string())?;
    let signature = pair.sign(&digest);
    let signed = embed_section(bytes, SECTION, signature.as_ref())
        .ok_or_else(|| "the file is not a WebAssembly binary".to_owned())?;
    Ok((signed, STANDARD.encode(pair.public_key().as_ref())))
}

/// The signature of `bytes` alone, in base64 (the text of a side file).
pub fn detached(bytes: &[u8], private: &str) -> Result<String, String> {
    let (signed, _) = sign(bytes, private)?;
    let inside = section_payloads(&signed, SECTION)
        .and_then(|found| found.first().map(|s| s.to_vec()))
        .ok_or_else(|| "the file is not a WebAssembly binary".to_owned())?;
    Ok(STANDARD.encode(inside))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preamble of a component and one custom section.
    fn component() -> Vec<u8> {
        let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        bytes.extend_from_slice(&[0, 4, 3, b'a', b'b', b'c']);
        bytes
    }

    #[test]
    fn signed_inside_or_beside_trusted_only_by_its_key() {
        let (private, public) = generate().expect("keys");
        let (_, other_public) = generate().expect("keys");
        let trusted = TrustedKeys::parse(&[other_public.clone(), public.clone()]).expect("keys");
        let bytes = component();
        assert_eq!(trusted.verify(&bytes, None), Err(Untrusted::Unsigned));
        let (signed, signer) = sign(&bytes, &private).expect("sign");
        assert_eq!(signer, public);
        assert_eq!(trusted.verify(&signed, None), Ok(()));
        // Signing again replaces the signature; the content hash ignores it.
        let (again, _) = sign(&signed, &private).expect("sign again");
        assert_eq!(again.len(), signed.len());
        assert_eq!(content_hash(&again), content_hash(&bytes));
        let side = detached(&bytes, &private).expect("detached");
        assert_eq!(trusted.verify(&bytes, Some(&side)), Ok(()));
        // Another key, or a changed component: not trusted.
        let only_other = TrustedKeys::parse(&[other_public]).expect("keys");
        assert_eq!(only_other.verify(&signed, None), Err(Untrusted::NotTrusted));
        let mut changed = signed.clone();
        changed[10] ^= 1;
        assert_eq!(trusted.verify(&changed, None), Err(Untrusted::NotTrusted));
        assert!(matches!(
            trusted.verify(&bytes, Some("!!")),
            Err(Untrusted::Malformed(_))
        ));
        assert!(matches!(
            trusted.verify(b"not wasm", None),
            Err(Untrusted::Malformed(_))
        ));
        // Without keys, everything runs.
        assert_eq!(TrustedKeys::default().verify(b"anything", None), Ok(()));
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(
            TrustedKeys::parse(&["AAAA".into()]).map_err(|e| e.0),
            Err(0)
        );
        assert!(TrustedKeys::parse(&["not base64!".into()]).is_err());
        assert!(sign(&component(), "AAAA").is_err());
    }
}
