//! The pure parts of serving a download: what a `Range` header (as `headers` decoded it) asks
//! of a file, and a `Content-Disposition` that is safe for any file name.

use std::ops::Bound;

use headers::Range;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one this server answers with the whole file (several ranges, another
    /// unit, or a header it cannot parse, as RFC 9110 allows).
    Full,
    /// One satisfiable range, `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// A range that lies outside the file: 416.
    Unsatisfiable,
}

/// What `range` asks of a file of `size` bytes. `None` is a request without a `Range` header,
/// or with one in another unit (`headers` refuses to decode those).
pub fn parse_range(range: Option<&Range>, size: u64) -> RangeRequest {
    let Some(range) = range else {
        return RangeRequest::Full;
    };
    // Exactly one well-formed range, or the whole file. `satisfiable_ranges` only drops a
    // well-formed range when it is a suffix longer than the length it is given, so against the
    // largest length it lists every one.
    let mut all = range.satisfiable_ranges(u64::MAX);
    let (Some(_), None) = (all.next(), all.next()) else {
        return RangeRequest::Full;
    };
    // Against the real size the crate turns a suffix (`bytes=-N`) into its start, and checks
    // nothing else: whether the range lies inside the file is decided here.
    match range.satisfiable_ranges(size).next() {
        // A suffix longer than the file: the whole of it, as RFC 9110 says (if it has any).
        None if size > 0 => RangeRequest::Partial {
            start: 0,
            end: size,
        },
        None => RangeRequest::Unsatisfiable,
        // bytes=A- (or a suffix): from A to the end.
        Some((Bound::Included(start), Bound::Unbounded)) if start < size => {
            RangeRequest::Partial { start, end: size }
        }
        Some((Bound::Included(_), Bound::Unbounded)) => RangeRequest::Unsatisfiable,
        // bytes=A-B, inclusive.
        Some((Bound::Included(start), Bound::Included(last))) if start <= last && start < size => {
            RangeRequest::Partial {
                start,
                end: last.saturating_add(1).min(size),
            }
        }
        Some((Bound::Included(start), Bound::Included(last))) if start <= last => {
            RangeRequest::Unsatisfiable
        }
        // bytes=B-A with B > A, or bytes=-.
        _ => RangeRequest::Full,
    }
}

/// The bytes RFC 5987 lets through unencoded in `filename*` (its `attr-char`): letters,
/// digits and ``!#$&+-.^_`|~``.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The longest file name put into a header, in characters.
const MAX_HEADER_NAME_CHARS: usize = 150;

/// `attachment; filename="<ASCII>"; filename*=UTF-8''<percent-encoded>`: the plain name has
/// every character that is not safe printable ASCII replaced by `_` (quotes, backslashes,
/// control characters, non-ASCII), both are cut to a sane length keeping the extension, and
/// the RFC 5987 form carries the real name for clients that read it.
pub fn content_disposition(name: &str) -> String {
    let shortened = shorten(name, MAX_HEADER_NAME_CHARS);
    let ascii: String = shortened
        .chars()
        .map(|c| match c {
            ' '
            | '!'
            | '#'..='$'
            | '&'
            | '('
            | ')'
            | '+'
            | ','
            | '-'
            | '.'
            | '0'..='9'
            | '='
            | '@'
            | 'A'..='Z'
            | '['
            | ']'
            | '^'
            | '_'
            | 'a'..='z'
            | '{'
            | '}'
            | '~' => c,
            _ => '_',
        })
        .collect();
    let ascii = match ascii.trim() {
        "" => "download".to_owned(),
        trimmed => trimmed.to_owned(),
    };
    let encoded = utf8_percent_encode(&shortened, ATTR_CHAR);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Cuts `name` to at most `max` characters, keeping a short extension.
fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_owned();
    }
    let extension = name
        .rfind('.')
        .map(|dot| &name[dot..])
        .filter(|ext| ext.chars().count() <= 16)
        .unwrap_or("");
    let keep = max - extension.chars().count();
    let stem: String = name.chars().take(keep).collect();
    format!("{stem}{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let cases = [
            (None, Full),
            (Some("bytes=0-9"), Partial { start: 0, end: 10 }),
            (
                Some("bytes=90-"),
                Partial {
                    start: 90,
                    end: 100,
                },
            ),
            (
                Some("bytes=-10"),
                Partial {
                    start: 90,
                    end: 100,
                },
            ),
            (Some("bytes=-1000"), Partial { start: 0, end: 100 }),
            (
                Some("bytes=95-200"),
                Partial {
                    start: 95,
                    end: 100,
                },
            ),
            (Some("bytes=100-"), Unsatisfiable),
            (Some("bytes=100-200"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=5-2"), Full),
            (Some("bytes=0-1,5-6"), Full),
            (Some("items=0-1"), Full),
            (Some("bytes=abc"), Full),
            (Some("bytes=-"), Full),
            // RFC 9110 lists may have empty elements: this is one range.
            (Some("bytes=0-9,"), Partial { start: 0, end: 10 }),
        ];
        for (header, expected) in cases {
            assert_eq!(range_of(header, 100), expected, "{header:?}");
        }
        assert_eq!(range_of(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(range_of(Some("bytes=-5"), 0), Unsatisfiable);
    }

    /// Decodes `header` as the download handler does, then asks [`parse_range`].
    fn range_of(header: Option<&str>, size: u64) -> RangeRequest {
        use headers::HeaderMapExt;
        let mut headers = axum::http::HeaderMap::new();
        if let Some(header) = header {
            let value = axum::http::HeaderValue::from_str(header).expect("a header value");
            headers.insert(axum::http::header::RANGE, value);
        }
        parse_range(headers.typed_get::<Range>().as_ref(), size)
    }

    #[test]
    fn hostile_names_are_safe_in_the_header() {
        for name in [
            "report.xlsx",
            "a\"b.csv",
            "line\r\nSet-Cookie: x=1.csv",
            "отчёт 2024.xlsx",
            "back\\slash;semi=colon%.pdf",
            "",
            &"x".repeat(5000),
        ] {
            let header = content_disposition(name);
            assert!(header.is_ascii(), "{header}");
            assert!(!header.contains('\r') && !header.contains('\n'), "{header}");
            let plain = header
                .split("filename=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("quoted name");
            assert!(!plain.contains('\\') && !plain.contains(';'), "{header}");
            assert!(header.len() < 1200, "{}", header.len());
            assert!(
                axum::http::HeaderValue::from_str(&header).is_ok(),
                "{header}"
            );
        }
        assert_eq!(
            content_disposition("отчёт.xlsx"),
            "attachment; filename=\"_____.xlsx\"; filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.xlsx"
        );
        assert!(content_disposition(&format!("{}.xlsx", "y".repeat(400))).contains("y.xlsx\""));
    }
}
