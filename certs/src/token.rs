use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::CertError;

/// SHA-256 of the CA certificate (DER), the pin every join token carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest(pub [u8; 32]);

impl CaDigest {
    pub fn of(ca_der: &[u8]) -> Self {
        CaDigest(Sha256::digest(ca_der).into())
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

/// `APIARY-1-<sha256 of the CA certificate, hex>-<secret>`.
///
/// The digest lets the agent authenticate the coordinator before sending
/// anything; the secret authenticates the agent. Expiry and rotation are kept by
/// the coordinator (the token it issued is the only one it accepts).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: CaDigest,
    secret: String,
}

const PREFIX: &str = "APIARY-1-";

impl JoinToken {
    pub fn generate(ca_digest: CaDigest) -> Self {
        let mut bytes = [0u8; 20];
        rand::rng().fill_bytes(&mut bytes);
        JoinToken {
            ca_digest,
            secret: hex::encode(bytes),
        }
    }

    /// What the coordinator stores: never the secret itself.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    // The secret stays out of logs and debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({PREFIX}{}-***)", self.ca_digest)
    }
}

impl FromStr for JoinToken {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| CertError::MalformedToken("it does not start with APIARY-1-".into()))?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or_else(|| CertError::MalformedToken("no secret after the CA digest".into()))?;
        let bytes = hex::decode(digest)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                CertError::MalformedToken("the CA digest is not 64 hex digits".into())
            })?;
        if secret.len() < 16 || !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(CertError::MalformedToken(
                "the secret is too short or has bad characters".into(),
            ));
        }
        Ok(JoinToken {
            ca_digest: CaDigest(bytes),
            secret: secret.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_secret_in_debug() {
        let t = JoinToken::generate(CaDigest::of(b"ca"));
        let text = t.to_string();
        assert!(text.starts_with("APIARY-1-"));
        let back: JoinToken = text.parse().expect("parse");
        assert_eq!(back, t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn rejects_malformed_tokens_with_reason() {
        for (bad, why) in [
            ("SWMTKN-1-abc", "does not start"),
            ("APIARY-1-abcd", "no secret"),
            ("APIARY-1-zz-0123456789abcdef0123", "64 hex"),
            (&format!("APIARY-1-{}-short", "a".repeat(64)), "too short"),
        ] {
            let err = bad.parse::<JoinToken>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn different_secrets_hash_differently() {
        let d = CaDigest::of(b"ca");
        assert_ne!(
            JoinToken::generate(d).secret_hash(),
            JoinToken::generate(d).secret_hash()
        );
    }
}
