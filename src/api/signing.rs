//! Signed download links: an HMAC-SHA256 over (file id, tenant, user, expiry) with the
//! server's secret, so that a link works without a token, for that file and user only, until
//! it expires.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::supervisor::FileRecord;

/// Whom a link is for: one file, for one user of one tenant. A link signed for one subject
/// never verifies for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSubject<'a> {
    /// The file's id.
    pub file_id: &'a str,
    /// The tenant that owns it.
    pub tenant: &'a str,
    /// The user it belongs to.
    pub user: &'a str,
}

impl<'a> From<&'a FileRecord> for LinkSubject<'a> {
    fn from(file: &'a FileRecord) -> Self {
        Self {
            file_id: file.id.as_str(),
            tenant: file.tenant.as_str(),
            user: file.user_id.as_str(),
        }
    }
}

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

    fn mac(&self, subject: LinkSubject<'_>, expires: u64) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        // Lengths first, so that no two different tuples serialize alike.
        for part in [subject.file_id, subject.tenant, subject.user] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// The hex signature of a link to `file_id` for (`tenant`, `user`) valid until `expires`
    /// (Unix seconds).
    pub fn sign(&self, subject: LinkSubject<'_>, expires: u64) -> String {
        hex::encode(self.mac(subject, expires).finalize().into_bytes())
    }

    /// Checks a link's signature (in constant time) and expiry against `now` (Unix seconds).
    pub fn verify(
        &self,
        subject: LinkSubject<'_>,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), LinkError> {
        let Ok(signature) = hex::decode(signature) else {
            return Err(LinkError::BadSignature);
        };
        self.mac(subject, expires)
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

    fn subject<'a>(file_id: &'a str, tenant: &'a str, user: &'a str) -> LinkSubject<'a> {
        LinkSubject {
            file_id,
            tenant,
            user,
        }
    }

    #[test]
    fn links_verify_only_unaltered_and_in_time() {
        let signer = Signer::new(b"secret").expect("key");
        let signature = signer.sign(subject("file_1", "t", "alice"), 100);
        assert_eq!(
            signer.verify(subject("file_1", "t", "alice"), 100, &signature, 50),
            Ok(())
        );
        assert_eq!(
            signer.verify(subject("file_1", "t", "alice"), 100, &signature, 101),
            Err(LinkError::Expired)
        );
        for (file, tenant, user, expires) in [
            ("file_2", "t", "alice", 100),
            ("file_1", "u", "alice", 100),
            ("file_1", "t", "bob", 100),
            ("file_1", "t", "alice", 1000),
        ] {
            assert_eq!(
                signer.verify(subject(file, tenant, user), expires, &signature, 50),
                Err(LinkError::BadSignature)
            );
        }
        assert_eq!(
            Signer::new(b"other").expect("key").verify(
                subject("file_1", "t", "alice"),
                100,
                &signature,
                50
            ),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify(subject("file_1", "t", "alice"), 100, "zz", 50),
            Err(LinkError::BadSignature)
        );
        // Boundaries between the parts are part of the signature.
        assert_ne!(
            signer.sign(subject("ab", "c", "d"), 1),
            signer.sign(subject("a", "bc", "d"), 1)
        );
        assert!(Signer::new(b"").is_err());
    }
}
