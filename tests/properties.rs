//! Property tests (proptest) of the pure functions that take what a client or the sandbox
//! chose: file names (`sanitize_name`, `base_name`, and the names a multipart form carries),
//! path translation between host and sandbox, and `Range` parsing. Each property runs a few
//! hundred generated cases, so that `cargo test` stays fast; a failure prints the smallest
//! input proptest could shrink it to.

use axum::extract::{FromRequest, Multipart};
use codebox::api::download::{RangeRequest, parse_range};
use codebox::translate::{self, PathMap};
use codebox::workspace::{MAX_NAME_BYTES, base_name, sanitize_name};
use headers::{HeaderMapExt, Range};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    }
}

/// Names built mostly of the characters that matter: separators, dots, spaces, control
/// characters, non-ASCII, plus anything at all now and then.
fn hostile_name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("\\".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just(" ".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\n".to_owned()),
        Just("\u{85}".to_owned()),
        Just("\u{7f}".to_owned()),
        Just("C:".to_owned()),
        Just("report.csv".to_owned()),
        Just("é".to_owned()),
        Just("x".repeat(120)),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Checks everything a sanitized name promises.
fn assert_safe_name(name: &str) {
    assert!(!name.is_empty(), "empty");
    assert!(!matches!(name, "." | ".."), "{name:?}");
    assert!(
        !name.contains(['/', '\\', '\0']) && !name.chars().any(char::is_control),
        "{name:?}"
    );
    assert!(name.len() <= MAX_NAME_BYTES, "{} bytes", name.len());
    assert_eq!(name.trim(), name, "spaces around {name:?}");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sanitized_names_are_safe_and_stable(raw in hostile_name()) {
        let name = sanitize_name(&raw);
        assert_safe_name(&name);
        // Sanitizing twice changes nothing, so the name stored and the name placed agree.
        prop_assert_eq!(sanitize_name(&name), name.clone());
        // Only the last part counts.
        prop_assert_eq!(sanitize_name(base_name(&raw).unwrap_or("")), name);
    }

    #[test]
    fn base_names_hold_no_folder(raw in hostile_name()) {
        match base_name(&raw) {
            Some(base) => {
                prop_assert!(!base.contains(['/', '\\']), "{:?}", base);
                prop_assert!(!matches!(base, "" | "." | ".."), "{:?}", base);
                prop_assert_eq!(base.trim(), base);
                prop_assert!(raw.contains(base));
                // Nothing after it is a real part.
                let after = &raw[raw.rfind(base).map_or(0, |at| at + base.len())..];
                prop_assert!(
                    after.split(['/', '\\']).all(|part| matches!(part.trim(), "" | "." | "..")),
                    "{:?} after {:?}", after, base
                );
            }
            None => prop_assert!(
                raw.split(['/', '\\']).all(|part| matches!(part.trim(), "" | "." | "..")),
                "{:?}", raw
            ),
        }
    }

    #[test]
    fn ranges_stay_within_the_file(header in any::<String>(), size in 0u64..10_000) {
        if let RangeRequest::Partial { start, end } = range_of(&header, size) {
            prop_assert!(start < end && end <= size, "{:?} of {}: {}..{}", header, size, start, end);
        }
    }

    #[test]
    fn ranges_match_rfc_9110(first in 0u64..300, last in 0u64..300, suffix in 0u64..300, size in 0u64..200) {
        let spec = format!("bytes={first}-{last}");
        let expected = if first > last {
            RangeRequest::Full
        } else if first >= size {
            RangeRequest::Unsatisfiable
        } else {
            RangeRequest::Partial { start: first, end: (last + 1).min(size) }
        };
        prop_assert_eq!(range_of(&spec, size), expected, "{}", spec);
        let open = format!("bytes={first}-");
        let expected = if first >= size {
            RangeRequest::Unsatisfiable
        } else {
            RangeRequest::Partial { start: first, end: size }
        };
        prop_assert_eq!(range_of(&open, size), expected, "{}", open);
        let tail = format!("bytes=-{suffix}");
        let expected = if suffix == 0 || size == 0 {
            RangeRequest::Unsatisfiable
        } else {
            RangeRequest::Partial { start: size - suffix.min(size), end: size }
        };
        prop_assert_eq!(range_of(&tail, size), expected, "{}", tail);
    }
}

/// What `header` asks of a file of `size` bytes, decoded as the download handler decodes it.
/// Text that is not a valid header value never reaches the handler: it is asked with none.
fn range_of(header: &str, size: u64) -> RangeRequest {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(value) = axum::http::HeaderValue::from_str(header) {
        headers.insert(axum::http::header::RANGE, value);
    }
    parse_range(headers.typed_get::<Range>().as_ref(), size)
}

/// Text made of path-like pieces: the sandbox folders, their near misses, and noise.
fn pathy_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/mnt/data"),
        Just("/mnt/inputs"),
        Just("/mnt/database"),
        Just("/mnt/data-old"),
        Just("/x/mnt/data"),
        Just("/"),
        Just("report.csv"),
        Just(" "),
        Just("\n"),
        Just("'"),
        Just("."),
        Just(".."),
        Just("%20"),
        Just("sandbox:"),
        Just("("),
        Just(")"),
        Just("é"),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

fn map() -> PathMap {
    PathMap::new(
        "/srv/codebox/workspaces/ws_1/data",
        "/srv/codebox/workspaces/ws_1/inputs",
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn translation_round_trips(text in pathy_text()) {
        let map = map();
        // The text holds no host path, so going to the host and back gives it back.
        let host = translate::to_host_paths(&text, &map);
        prop_assert_eq!(translate::to_sandbox_paths(&host, &map), text.clone());
        // And text without host paths is left alone on the way out.
        prop_assert_eq!(translate::to_sandbox_paths(&text, &map), text.clone());
        // Nothing of the sandbox folders survives on the host side as a whole component.
        for sandbox in ["/mnt/data/", "/mnt/inputs/"] {
            let at_start = host.starts_with(sandbox);
            let after_space = host.contains(&format!(" {sandbox}"));
            prop_assert!(!at_start && !after_space, "{:?} -> {:?}", text, host);
        }
    }

    #[test]
    fn link_rendering_offers_only_safe_names(text in pathy_text()) {
        let mut offered = Vec::new();
        let unchanged = translate::render_links(&text, |rel| {
            offered.push(rel.to_owned());
            None
        });
        prop_assert_eq!(unchanged, text.clone());
        for rel in offered {
            prop_assert!(!rel.is_empty() && !rel.starts_with('/'), "{:?}", rel);
            prop_assert!(
                rel.split('/').all(|part| !matches!(part, "" | "." | "..")),
                "{:?}", rel
            );
            prop_assert!(!rel.contains('\\') && !rel.chars().any(char::is_control), "{:?}", rel);
        }
    }
}

/// The file name of the one file field of a multipart form that carries `filename` between
/// its quotes byte for byte, as axum's `Multipart` (the upload route's extractor) reads it.
fn parsed_file_name(filename: &str) -> Option<Option<String>> {
    let boundary = "prop-boundary-31c9";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: text/csv\r\n\r\na,b\r\n--{boundary}--\r\n"
    );
    let request = axum::http::Request::builder()
        .method("POST")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(axum::body::Body::from(body))
        .ok()?;
    let runtime = tokio::runtime::Builder::new_current_thread().build().ok()?;
    runtime.block_on(async {
        let mut form = Multipart::from_request(request, &()).await.ok()?;
        // A form the parser refuses is a 422 upstream; only what it accepts is named.
        let field = form.next_field().await.ok()??;
        Some(field.file_name().map(str::to_owned))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn names_from_forms_become_safe_names(filename in "[^\"\r\n]{0,80}") {
        if let Some(parsed) = parsed_file_name(&filename) {
            let sent = parsed.unwrap_or_else(|| "upload".to_owned());
            assert_safe_name(&sanitize_name(&sent));
            if let Some(base) = base_name(&sent) {
                prop_assert!(!base.contains(['/', '\\']), "{:?}", base);
            }
        }
    }

    #[test]
    fn windows_and_unix_paths_in_forms_keep_their_file_name(
        folders in prop::collection::vec("[A-Za-z0-9 _.-]{0,12}", 0..5),
        name in "[A-Za-z0-9_-][A-Za-z0-9 _.-]{0,20}[A-Za-z0-9_]",
        windows in any::<bool>(),
    ) {
        let separator = if windows { "\\" } else { "/" };
        let mut path = folders.join(separator);
        path.push_str(separator);
        path.push_str(&name);
        let parsed = parsed_file_name(&path).flatten();
        // Whatever the form parser makes of a backslash, the last part is the file's name.
        prop_assert_eq!(parsed.as_deref().map(sanitize_name), Some(name.clone()), "{:?}", path);
    }
}
