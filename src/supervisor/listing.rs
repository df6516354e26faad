//! All of a user's files in one listing: newest first, filtered by chat, message, source and
//! name, a page at a time. Pages are cut by keyset (the last row's `(created_at, id)`, carried
//! in an opaque cursor), not by offset, so that a page costs one index range scan at any depth
//! and a file stored meanwhile neither repeats nor hides a row. It is apart from `files.rs`
//! because the cursor is a format of its own.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::catalog::FileQuery;

/// The page size when the caller names none.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// The largest page a caller may ask for.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// What a listing of the caller's files asks for, as the caller sent it; checked by
/// [`Supervisor::list_files`].
#[derive(Debug, Clone, Default)]
pub struct FileListing {
    /// Only the files of this chat.
    pub chat_id: Option<String>,
    /// Only the files of this message.
    pub message_id: Option<String>,
    /// Only the files from this source (`upload`, `code_execution`, `figure`).
    pub source: Option<String>,
    /// Only the files whose name contains this text, whatever its case.
    pub q: Option<String>,
    /// At most this many files (1 to [`MAX_PAGE_SIZE`]; [`DEFAULT_PAGE_SIZE`] if absent).
    pub limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
}

impl FileListing {
    /// The catalog query it stands for, or why it cannot be one.
    fn check(self) -> Result<FileQuery> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("must be 1 to {MAX_PAGE_SIZE}"),
            ));
        }
        let source = self
            .source
            .map(|source| {
                source.parse::<FileSource>().map_err(|_| {
                    Error::invalid("source", "must be upload, code_execution or figure")
                })
            })
            .transpose()?;
        if self.q.as_ref().is_some_and(|q| q.chars().count() > 1024) {
            return Err(Error::invalid("q", "must be at most 1024 characters"));
        }
        Ok(FileQuery {
            chat_id: self.chat_id.map(ChatId::parse).transpose()?,
            message_id: self.message_id.map(MessageId::parse).transpose()?,
            source,
            name_contains: self.q,
            after: self.cursor.as_deref().map(decode_cursor).transpose()?,
            limit,
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct FilePage {
    /// The files, newest first.
    pub files: Vec<FileRecord>,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

impl Supervisor {
    /// One page of `owner`'s live files, newest first (see [`FileListing`]). Each upload shows
    /// the path the code sees in the message it was uploaded with, as a lookup does.
    pub async fn list_files(&self, owner: &Owner, listing: FileListing) -> Result<FilePage> {
        let query = listing.check()?;
        let limit = query.limit;
        // One row more than the page tells whether there is a next page.
        let mut files = self
            .catalog
            .files()
            .list(
                owner,
                &FileQuery {
                    limit: limit + 1,
                    ..query
                },
            )
            .await?;
        let next_cursor = if files.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            files.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            files.last().map(encode_cursor)
        } else {
            None
        };
        for file in &mut files {
            self.show_attached_path(owner, file).await?;
        }
        Ok(FilePage { files, next_cursor })
    }
}

/// The cursor after `file`: its `created_at` and id, encoded so that callers treat it as
/// opaque.
fn encode_cursor(file: &FileRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", file.created_at, file.id))
}

/// The `(created_at, id)` a cursor carries; a cursor this server did not make is refused.
fn decode_cursor(cursor: &str) -> Result<(String, FileId)> {
    let malformed = || Error::invalid("cursor", "is not a cursor this listing gave");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (created_at, id) = text.split_once('|').ok_or_else(malformed)?;
    let is_time =
        time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
            .is_ok();
    let is_id = id
        .strip_prefix("file_")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()));
    if !is_time || !is_id {
        return Err(malformed());
    }
    Ok((created_at.to_owned(), FileId::from_stored(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_carries_the_last_rows_position() {
        let time = "2026-11-29T21:00:00.000001Z";
        let cursor = URL_SAFE_NO_PAD.encode(format!("{time}|file_0123abcd"));
        let (created_at, id) = decode_cursor(&cursor).expect("a cursor");
        assert_eq!(created_at, time);
        assert_eq!(id.as_str(), "file_0123abcd");
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for text in [
            "",
            "nope|file_1",
            "2026-11-29T21:00:00Z|x",
            "2026-11-29T21:00:00Z",
        ] {
            let cursor = URL_SAFE_NO_PAD.encode(text);
            assert!(decode_cursor(&cursor).is_err(), "{text}");
        }
        assert!(decode_cursor("not base64 !").is_err());
    }

    #[test]
    fn page_sizes_are_bounded() {
        for limit in [0, -1, MAX_PAGE_SIZE + 1] {
            let listing = FileListing {
                limit: Some(limit),
                ..FileListing::default()
            };
            assert!(listing.check().is_err(), "{limit}");
        }
        let listing = FileListing::default().check().expect("the defaults");
        assert_eq!(listing.limit, DEFAULT_PAGE_SIZE);
        let bad_source = FileListing {
            source: Some("Upload".into()),
            ..FileListing::default()
        };
        assert!(bad_source.check().is_err());
    }
}
