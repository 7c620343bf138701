//! Passwords and tokens: the parts of authentication that are not replicated.
//!
//! **Passwords** are hashed here, on the member that took the request, with
//! PBKDF2-HMAC-SHA256 and a random salt, so the log and every backup hold only
//! hashes (etcd 3.4 put the plaintext in its raft log) and apply stays
//! deterministic. Verifying runs on a blocking thread: it is slow on purpose.
//!
//! **Tokens** are signed, not stored: `rst1.<payload>.<mac>`, hex-encoded, the
//! payload naming the user, the generation of its credentials and an expiry,
//! the MAC an HMAC-SHA256 under the cluster's token key (replicated state, set
//! when auth is turned on, dropped when it is turned off). Any member checks
//! any token at once, after a restart or a failover too. etcd's "simple"
//! tokens instead cost a log entry per login, live in each member's memory,
//! and die with a restart. What still revokes a token here: a password change
//! or a delete of the user (its generation moves; checked at apply), turning
//! auth off (the key goes), and the expiry (`--auth-token-ttl`, fixed from
//! issue rather than reset by use; clientv3 authenticates again by itself when
//! it is told "invalid auth token").

use ring::{hmac, pbkdf2, rand::SecureRandom};
use roster_state::auth::{Caller, PasswordHash};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

/// etcd's default `--auth-token-ttl`: 300 s.
pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// PBKDF2 rounds of a new password hash. About 40 ms on this project's 2-core
/// test machine in a release build, the cost class of etcd's bcrypt at cost 10.
pub const PBKDF2_ITERATIONS: u32 = 100_000;
const TOKEN_PREFIX: &str = "rst1.";

/// What a token says, before its MAC is checked.
#[derive(Serialize, Deserialize)]
struct Claims {
    user: String,
    generation: u64,
    expires_ms: u64,
    nonce: [u8; 8],
}

/// `n` random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut bytes = vec![0; n];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes)
}

/// A new salted hash of `password`.
pub fn hash_password(
    password: &str,
    iterations: u32,
) -> Result<PasswordHash, ring::error::Unspecified> {
    let rounds = NonZeroU32::new(iterations).ok_or(ring::error::Unspecified)?;
    let salt = random_bytes(16)?;
    let mut hash = vec![0; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    Ok(PasswordHash {
        iterations,
        salt,
        hash,
    })
}

/// Whether `password` matches `hash` (in constant time).
pub fn verify_password(hash: &PasswordHash, password: &str) -> bool {
    let Some(rounds) = NonZeroU32::new(hash.iterations) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &hash.salt,
        password.as_bytes(),
        &hash.hash,
    )
    .is_ok()
}

/// A token for `user` at `generation`, valid until `expires_ms`.
pub fn sign(
    key: &[u8],
    user: &str,
    generation: u64,
    expires_ms: u64,
) -> Result<String, ring::error::Unspecified> {
    let mut nonce = [0; 8];
    ring::rand::SystemRandom::new().fill(&mut nonce)?;
    let claims = Claims {
        user: user.to_string(),
        generation,
        expires_ms,
        nonce,
    };
    let payload = bincode::serialize(&claims).map_err(|_| ring::error::Unspecified)?;
    let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &payload);
    Ok(format!(
        "{TOKEN_PREFIX}{}.{}",
        hex(&payload),
        hex(mac.as_ref())
    ))
}

/// The caller a token names, if its MAC is right under `key` and it has not
/// expired at `now_ms`. Whether the credentials are still current is for
/// apply (and reads) to decide against the state.
pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Option<Caller> {
    if key.is_empty() {
        return None;
    }
    let (payload, mac) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let (payload, mac) = (unhex(payload)?, unhex(mac)?);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &payload, &mac).ok()?;
    let claims: Claims = bincode::deserialize(&payload).ok()?;
    (claims.expires_ms > now_ms).then_some(Caller {
        user: claims.user,
        generation: claims.generation,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("s3cret", 1_000).expect("hash");
        assert!(verify_password(&hash, "s3cret"));
        assert!(!verify_password(&hash, "s3cret "));
        let other = hash_password("s3cret", 1_000).expect("hash");
        assert_ne!(hash.salt, other.salt, "each hash has its own salt");
    }

    #[test]
    fn a_token_holds_its_caller_until_it_expires() {
        let key = random_bytes(32).expect("key");
        let token = sign(&key, "alice", 7, 5_000).expect("sign");
        let caller = verify(&key, &token, 4_999).expect("valid");
        assert_eq!((caller.user.as_str(), caller.generation), ("alice", 7));
        assert!(verify(&key, &token, 5_000).is_none(), "expired");
        assert!(verify(&random_bytes(32).expect("key"), &token, 0).is_none());
        assert!(verify(&[], &token, 0).is_none(), "auth off: no key");
    }

    #[test]
    fn a_changed_or_garbled_token_is_refused() {
        let key = random_bytes(32).expect("key");
        let token = sign(&key, "alice", 7, u64::MAX).expect("sign");
        let forged = sign(&key, "root", 7, u64::MAX).expect("sign");
        let (_, mac) = token.rsplit_once('.').expect("mac");
        let (payload, _) = forged.rsplit_once('.').expect("payload");
        assert!(verify(&key, &format!("{payload}.{mac}"), 0).is_none());
        for garbage in ["", "rst1.", "rst1.zz.zz", "abc.123", "rst1.0.0"] {
            assert!(verify(&key, garbage, 0).is_none(), "{garbage:?}");
        }
    }
}
