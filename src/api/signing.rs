//! Signed download links: an HMAC-SHA256 over (file id, tenant, user, expiry) with the
//! server's secret, so that a link works without a token, for that file and user only, until
//! it expires.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs and checks download links.
#[derive(Clone)]
pub struct Signer {
    /// The keyed MAC, ready to be cloned for each link.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.write_str("Signer(..)")
    }
}

/// Why a signed link was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The expiry has passed.
    Expired,
    /// The signature does not match: altered, or made for another file or user.
    BadSignature,
}

impl Signer {
    /// A signer with this secret (HMAC accepts any length; an empty secret is refused).
    pub fn new(secret: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        if secret.is_empty() {
            return Err(hmac::digest::InvalidLength);
        }
        Ok(Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(secret)?,
        })
    }

    fn mac(&self, file_id: &str, tenant: &str, user: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        // Lengths first, so that no two different tuples serialize alike.
        for part in [file_id, tenant, user] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// The hex signature of a link to `file_id` for (`tenant`, `user`) valid until `expires`
    /// (Unix seconds).
    pub fn sign(&self, file_id: &str, tenant: &str, user: &str, expires: u64) -> String {
        hex::encode(
            self.mac(file_id, tenant, user, expires)
                .finalize()
                .into_bytes(),
        )
    }

    /// Checks a link's signature (in constant time) and expiry against `now` (Unix seconds).
    pub fn verify(
        &self,
        file_id: &str,
        tenant: &str,
        user: &str,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), LinkError> {
        let Ok(signature) = hex::decode(signature) else {
            return Err(LinkError::BadSignature);
        };
        self.mac(file_id, tenant, user, expires)
            .verify_slice(&signature)
            .map_err(|_| LinkError::BadSignature)?;
        if now > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_unaltered_and_in_time() {
        let signer = Signer::new(b"secret").expect("key");
        let signature = signer.sign("file_1", "t", "alice", 100);
        assert_eq!(
            signer.verify("file_1", "t", "alice", 100, &signature, 50),
            Ok(())
        );
        assert_eq!(
            signer.verify("file_1", "t", "alice", 100, &signature, 101),
            Err(LinkError::Expired)
        );
        for (file, tenant, user, expires) in [
            ("file_2", "t", "alice", 100),
            ("file_1", "u", "alice", 100),
            ("file_1", "t", "bob", 100),
            ("file_1", "t", "alice", 1000),
        ] {
            assert_eq!(
                signer.verify(file, tenant, user, expires, &signature, 50),
                Err(LinkError::BadSignature)
            );
        }
        assert_eq!(
            Signer::new(b"other")
                .expect("key")
                .verify("file_1", "t", "alice", 100, &signature, 50),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify("file_1", "t", "alice", 100, "zz", 50),
            Err(LinkError::BadSignature)
        );
        // Boundaries between the parts are part of the signature.
        assert_ne!(
            signer.sign("ab", "c", "d", 1),
            signer.sign("a", "bc", "d", 1)
        );
        assert!(Signer::new(b"").is_err());
    }
}
