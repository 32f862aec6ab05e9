//! Secrets: generating admin keys and channel tokens, hashing tokens for storage, and
//! comparing credentials in constant time. Nothing here logs a secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of channel tokens, so a leaked token is recognisable (and greppable by scanners).
pub const CHANNEL_TOKEN_PREFIX: &str = "hct_";

/// 32 random bytes from the OS-seeded CSPRNG, URL-safe base64 (43 characters).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Prefix of generated admin keys: recognisable like channel tokens, and a key never starts
/// with `-` (a command line would take `--key -abc…` for a flag).
pub const ADMIN_KEY_PREFIX: &str = "hak_";

/// A fresh admin key.
pub fn new_admin_key() -> String {
    format!("{ADMIN_KEY_PREFIX}{}", random_secret())
}

/// A fresh channel token.
pub fn new_channel_token() -> String {
    format!("{CHANNEL_TOKEN_PREFIX}{}", random_secret())
}

/// The SHA-256 of a token, hex-encoded: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Compares a presented token with a stored hash in constant time.
pub fn token_matches_hash(token: &str, stored_hash: &str) -> bool {
    hash_token(token)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Compares two secrets in constant time (hashing first, so lengths do not leak either).
pub fn secrets_equal(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_admin_keys_never_start_with_a_dash() {
        // URL-safe base64 starts with `-` once in 64: a key passed as `--key "$KEY"` was then
        // taken for a flag. 2,000 draws of each would miss that with odds of about 1e-14.
        for _ in 0..2000 {
            let key = new_admin_key();
            assert!(key.starts_with(ADMIN_KEY_PREFIX), "{key}");
        }
    }

    #[test]
    fn tokens_are_random_and_verify_against_their_hash() {
        let t1 = new_channel_token();
        let t2 = new_channel_token();
        assert_ne!(t1, t2);
        assert!(t1.starts_with(CHANNEL_TOKEN_PREFIX));
        let h = hash_token(&t1);
        assert!(token_matches_hash(&t1, &h));
        assert!(!token_matches_hash(&t2, &h));
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("", "abc"));
    }
}
