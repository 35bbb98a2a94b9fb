//! Encryption at rest and random secrets.
//!
//! Sealed values are `0x01 | key id (4 bytes) | nonce (12) | AES-256-GCM ciphertext+tag`.
//! The key id is the first four bytes of SHA-256 of the key, so rotation works by
//! adding a new current key and keeping the old ones in the decrypt-only list.
//! Every value is bound to where it belongs through the associated data (for
//! example `merchant:<id>:webhook_secret`), so a ciphertext copied to another
//! row does not decrypt.

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value was made with a key that is not configured")]
    UnknownKey,
    #[error("sealed value failed authentication")]
    Tampered,
}

#[derive(Clone)]
pub struct Keyring {
    keys: Vec<([u8; 4], Aes256Gcm)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

fn key_id(key: &[u8; 32]) -> [u8; 4] {
    let d = Sha256::digest(key);
    [d[0], d[1], d[2], d[3]]
}

impl Keyring {
    /// `keys[0]` encrypts; all of them decrypt.
    pub fn new(keys: &[[u8; 32]]) -> Self {
        assert!(!keys.is_empty(), "a keyring needs at least one key");
        Self {
            keys: keys
                .iter()
                .map(|k| (key_id(k), Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k))))
                .collect(),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < HEADER + 16 || sealed[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let id = &sealed[1..5];
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or(CryptoError::UnknownKey)?;
        cipher
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER]),
                Payload {
                    msg: &sealed[HEADER..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered)
    }

    /// Whether a sealed value was made with an older key (and should be re-sealed).
    pub fn needs_rotation(&self, sealed: &[u8]) -> bool {
        sealed.len() >= 5 && sealed[1..5] != self.keys[0].0
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A random url-safe token with the given prefix, e.g. `pk_live_…`.
pub fn random_token(prefix: &str, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Equality that takes as long whatever the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let ring = Keyring::new(&[[7u8; 32]]);
        let sealed = ring.seal(b"whsec_abc", "merchant:1");
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"));
        assert_eq!(ring.open(&sealed, "merchant:1").unwrap(), b"whsec_abc");
        assert_eq!(ring.open(&sealed, "merchant:2"), Err(CryptoError::Tampered));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            ring.open(&flipped, "merchant:1"),
            Err(CryptoError::Tampered)
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = Keyring::new(&[[1u8; 32]]);
        let sealed = old.seal(b"x", "a");
        let rotated = Keyring::new(&[[2u8; 32], [1u8; 32]]);
        assert_eq!(rotated.open(&sealed, "a").unwrap(), b"x");
        assert!(rotated.needs_rotation(&sealed));
        assert!(!rotated.needs_rotation(&rotated.seal(b"x", "a")));
        let new_only = Keyring::new(&[[2u8; 32]]);
        assert_eq!(new_only.open(&sealed, "a"), Err(CryptoError::UnknownKey));
    }
}
