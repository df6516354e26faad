//! Identifiers: the opaque ones codebox mints, and the checks on the ones callers choose.
//!
//! Minted ids are a short type prefix and a UUIDv7 (time-ordered, so they sort by creation and
//! index well). Caller-chosen ids (`chat_id`, `message_id`) are 1-128 characters of
//! `[A-Za-z0-9._:-]`, and neither `.` nor `..`: those two are path segments that every client
//! and proxy resolves away, so a resource named by one could never be reached by its URL.

/// A caller-chosen id that cannot be used, with the field it came in and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidId {
    /// The request field the id came in.
    pub field: &'static str,
    /// Why it was refused, in words a caller can act on.
    pub reason: String,
}

impl InvalidId {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A new opaque id such as `file_0192f1c2...`.
pub fn mint(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Checks an id that the chat backend chose; `field` names it in the error.
pub fn check_external(field: &'static str, value: &str) -> Result<(), InvalidId> {
    if value.is_empty() || value.len() > 128 {
        return Err(InvalidId::new(field, "must be 1 to 128 characters long"));
    }
    if matches!(value, "." | "..") {
        return Err(InvalidId::new(
            field,
            "may not be \".\" or \"..\", which cannot travel in a URL path",
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(InvalidId::new(
            field,
            format!("may only hold A-Z, a-z, 0-9, '.', '_', ':' and '-', not {bad:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_unique_and_ordered() {
        let first = mint("run");
        let second = mint("run");
        assert!(first.starts_with("run_"));
        assert_ne!(first, second);
        assert!(first < second, "uuid v7 ids sort by creation time");
    }

    #[test]
    fn external_ids_are_checked() {
        for good in [
            "m1",
            "chat:42",
            "a.b_c-d",
            "...",
            ".a",
            "a..",
            &"x".repeat(128),
        ] {
            assert!(check_external("message_id", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "..\u{0}",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            let error = check_external("message_id", bad).expect_err(bad);
            assert!(
                error.to_string().starts_with("invalid message_id"),
                "{error}"
            );
        }
    }
}
