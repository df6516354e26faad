//! Identifiers: the opaque ones codebox mints, and the checks on the ones callers choose.
//!
//! Minted ids are a short type prefix and a UUIDv7 (time-ordered, so they sort by creation and
//! index well). Caller-chosen ids (`chat_id`, `message_id`) are 1-128 characters of
//! `[A-Za-z0-9._:-]`, and neither `.` nor `..`: those two are path segments that every client
//! and proxy resolves away, so a resource named by one could never be reached by its URL.
//!
//! Each kind of id is its own type ([`FileId`], [`RunId`], [`MessageId`], [`ChatId`],
//! [`TenantId`], [`UserId`], [`WorkspaceId`], [`BlobKey`]), so that one cannot be passed where
//! another is expected. They serialize as their plain text (JSON and the catalog hold the same
//! strings as before), and none of them dereferences to `str`: reading the text is an explicit
//! [`as_str`](FileId::as_str) at a boundary (SQL binds, runtime calls, paths).

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

/// Declares an id type: a `String` newtype that serializes as its text, shows as its text and
/// compares with text, but does not dereference to `str`. `from_stored` and deserializing are the
/// trusted ways in (unchecked); codebox mints some kinds (`new`) and checks the ones callers
/// choose (`parse`).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// An id codebox already vouches for, unchecked: read back from the catalog or a
            /// link it signed, or taken from credentials that were checked where they came in.
            pub fn from_stored(value: impl Into<String>) -> Self {
                Self(value.into())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

id_type! {
    /// A stored file's id (`file_...`), minted by codebox.
    FileId
}

id_type! {
    /// A run's id (`run_...`), minted by codebox.
    RunId
}

id_type! {
    /// A message's id, chosen by the chat backend.
    MessageId
}

id_type! {
    /// A chat's id, chosen by the chat backend.
    ChatId
}

id_type! {
    /// A tenant's id, from the caller's credentials.
    TenantId
}

id_type! {
    /// An end user's id within a tenant, from the caller's request.
    UserId
}

id_type! {
    /// A message's workspace id (`ws_...`), minted by codebox.
    WorkspaceId
}

id_type! {
    /// The key of an object in the blob store. Built only by [`BlobKey::for_file`], so that
    /// every stored file's bytes live under one naming scheme.
    BlobKey
}

impl FileId {
    /// A new file id.
    // Not `Default`: a default that mints a fresh id each time would surprise.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(mint("file"))
    }
}

impl RunId {
    /// A new run id.
    // Not `Default`: a default that mints a fresh id each time would surprise.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(mint("run"))
    }
}

impl WorkspaceId {
    /// A new workspace id.
    // Not `Default`: a default that mints a fresh id each time would surprise.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(mint("ws"))
    }
}

impl MessageId {
    /// A message id a caller sent, checked (the error names the `message_id` field).
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        check_external("message_id", &value)?;
        Ok(Self(value))
    }
}

impl UserId {
    /// An end user's id a caller sent (`X-User-Id`, or a notebook client's
    /// `KERNEL_USERNAME`), checked the same way wherever it comes in: 1 to 256 visible ASCII
    /// characters. `field` names where it came from, for the error.
    pub fn parse(field: &'static str, value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        if value.is_empty() || value.len() > 256 || !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(InvalidId::new(
                field,
                "must be 1 to 256 visible ASCII characters",
            ));
        }
        Ok(Self(value))
    }
}

impl ChatId {
    /// A chat id a caller sent, checked (the error names the `chat_id` field).
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        check_external("chat_id", &value)?;
        Ok(Self(value))
    }
}

impl BlobKey {
    /// The key of a stored file's bytes: `files/<file id>`.
    pub fn for_file(file_id: &FileId) -> Self {
        Self(format!("files/{file_id}"))
    }

    /// The key `text` names, when it is one [`BlobKey::for_file`] could have made for a
    /// minted file id (`files/file_<32 lower-case hex digits>`); anything else in the store
    /// (written by someone else, or by an older scheme) is `None`, so that nothing codebox
    /// did not name is ever taken for one of its blobs.
    pub fn parse_file_key(text: &str) -> Option<Self> {
        let id = text.strip_prefix("files/")?.strip_prefix("file_")?;
        let minted = id.len() == 32
            && id
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        minted.then(|| Self(text.to_owned()))
    }

    /// The id of the file whose bytes this key holds, for a key of the files scheme.
    pub fn file_id(&self) -> Option<FileId> {
        self.0.strip_prefix("files/").map(FileId::from_stored)
    }
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
    fn typed_ids_are_their_text() {
        let file = FileId::new();
        assert!(file.as_str().starts_with("file_"));
        assert!(RunId::new().as_str().starts_with("run_"));
        assert!(WorkspaceId::new().as_str().starts_with("ws_"));
        assert_eq!(BlobKey::for_file(&file), format!("files/{file}").as_str());
        let key = BlobKey::for_file(&file);
        assert_eq!(BlobKey::parse_file_key(key.as_str()), Some(key.clone()));
        assert_eq!(key.file_id(), Some(file.clone()));
        for foreign in [
            "files/file_x",
            "files/report.csv",
            "other/file_0123456789abcdef0123456789abcdef",
            "files/file_0123456789ABCDEF0123456789abcdef",
            "files/file_0123456789abcdef0123456789abcdef#1",
            "files/file_0123456789abcdef0123456789abcdef/x",
        ] {
            assert_eq!(BlobKey::parse_file_key(foreign), None, "{foreign}");
        }
        let json = serde_json::to_string(&file).expect("JSON");
        assert_eq!(json, format!("\"{file}\""));
        assert_eq!(serde_json::from_str::<FileId>(&json).expect("JSON"), file);
        assert_eq!(MessageId::parse("m1").expect("valid"), "m1");
        let error = ChatId::parse("a/b").expect_err("a slash");
        assert!(error.to_string().starts_with("invalid chat_id"), "{error}");
        let error = MessageId::parse("").expect_err("empty");
        assert!(
            error.to_string().starts_with("invalid message_id"),
            "{error}"
        );
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
