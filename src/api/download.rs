//! The pure parts of serving a download: `Range` parsing and a `Content-Disposition` that is
//! safe for any file name.

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

/// Parses a `Range` header for a file of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |text: &str| text.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(suffix) if size > 0 => RangeRequest::Partial {
                start: size.saturating_sub(suffix),
                end: size,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // bytes=A-: from A to the end.
        (false, true) => match parse(first) {
            Some(start) if start < size => RangeRequest::Partial { start, end: size },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // bytes=A-B, inclusive.
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(last)) if start <= last && start < size => RangeRequest::Partial {
                start,
                end: last.saturating_add(1).min(size),
            },
            (Some(start), Some(last)) if start <= last => RangeRequest::Unsatisfiable,
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

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
    let mut encoded = String::new();
    for byte in shortened.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
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
        ];
        for (header, expected) in cases {
            assert_eq!(parse_range(header, 100), expected, "{header:?}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
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
