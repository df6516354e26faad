//! The HTTP API end to end (ranges and ETags, hostile file names, large files in flat memory),
//! as a chat backend sees it: a server in this process on a free local port, the real Docker
//! engine, a real SQLite file and the local blob folder, `reqwest` as the client. Nothing is
//! mocked; no test asserts how long anything took. Shared helpers are in `common/web.rs`.

mod common;

use std::collections::BTreeSet;

use common::web::*;
use common::{ALICE, TestServer, assert_error, json_of};
use futures::StreamExt;
use reqwest::{Method, header};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// 4. Ranges and ETags.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_answer_ranges_and_etags_with_safe_headers() {
    let server = TestServer::new().await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = server.upload_ok(ALICE, "numbers.csv", &data, None).await;
    let id = text_of(&file["id"]).to_owned();
    let path = format!("/v1/files/{id}/content");
    let etag = format!("\"{}\"", sha256_hex(&data));
    let get = |range: Option<&str>, if_none_match: Option<&str>| {
        let mut request = server.get(ALICE, &path);
        if let Some(range) = range {
            request = request.header(header::RANGE, range);
        }
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        request.send()
    };

    let full = get(None, None).await.expect("get");
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(header_of(&full, header::CONTENT_LENGTH), "1000");
    assert_eq!(header_of(&full, header::ETAG), etag);
    assert_eq!(header_of(&full, header::CONTENT_TYPE), "text/csv");
    assert_eq!(header_of(&full, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header_of(&full, header::ACCEPT_RANGES), "bytes");
    assert_eq!(
        header_of(&full, header::CONTENT_DISPOSITION),
        "attachment; filename=\"numbers.csv\"; filename*=UTF-8''numbers.csv"
    );
    assert_eq!(full.bytes().await.expect("body"), data);

    for (range, start, end) in [
        ("bytes=0-9", 0, 10),
        ("bytes=-5", 995, 1000),
        ("bytes=990-", 990, 1000),
        ("bytes=500-2000", 500, 1000),
    ] {
        let partial = get(Some(range), None).await.expect("get");
        assert_eq!(partial.status().as_u16(), 206, "{range}");
        assert_eq!(
            header_of(&partial, header::CONTENT_RANGE),
            format!("bytes {start}-{}/1000", end - 1),
            "{range}"
        );
        assert_eq!(
            header_of(&partial, header::CONTENT_LENGTH),
            (end - start).to_string(),
            "{range}"
        );
        assert_eq!(header_of(&partial, header::ETAG), etag, "{range}");
        assert_eq!(
            partial.bytes().await.expect("body"),
            data[start..end],
            "{range}"
        );
    }

    for range in ["bytes=1000-", "bytes=1000-1005", "bytes=-0"] {
        let unsatisfiable = get(Some(range), None).await.expect("get");
        assert_eq!(unsatisfiable.status().as_u16(), 416, "{range}");
        assert_eq!(
            header_of(&unsatisfiable, header::CONTENT_RANGE),
            "bytes */1000",
            "{range}"
        );
    }

    // Several ranges are answered with the whole file, as RFC 9110 allows.
    let several = get(Some("bytes=0-1,5-6"), None).await.expect("get");
    assert_eq!(several.status().as_u16(), 200);
    assert!(several.headers().get(header::CONTENT_RANGE).is_none());
    assert_eq!(several.bytes().await.expect("body"), data);

    let cached = get(None, Some(&etag)).await.expect("get");
    assert_eq!(cached.status().as_u16(), 304);
    assert_eq!(header_of(&cached, header::ETAG), etag);
    assert!(cached.bytes().await.expect("body").is_empty());
    let listed = get(None, Some(&format!("\"nope\", {etag}")))
        .await
        .expect("get");
    assert_eq!(listed.status().as_u16(), 304);
    let stale = get(None, Some("\"0000\"")).await.expect("get");
    assert_eq!(stale.status().as_u16(), 200);
    assert_eq!(stale.bytes().await.expect("body"), data);

    // Signed links get the same treatment.
    let link = text_of(&file["download_url"]);
    let partial = server
        .client
        .get(link)
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .expect("get");
    assert_eq!(partial.status().as_u16(), 206);
    assert_eq!(header_of(&partial, header::CONTENT_RANGE), "bytes 0-9/1000");
    assert_eq!(partial.bytes().await.expect("body"), data[..10]);
    let cached = server
        .client
        .get(link)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(cached.status().as_u16(), 304);
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile file names.
// ---------------------------------------------------------------------------------------------

/// Downloads `file` and checks its Content-Disposition: visible ASCII only, no line breaks, a
/// plain name without quotes, separators or control characters, and a `filename*` that decodes
/// to the file's name (or, for a very long one, a shortened form keeping its extension).
async fn assert_safe_disposition(server: &TestServer, file: &Value) {
    let name = text_of(&file["name"]);
    let response = server
        .get(
            ALICE,
            &format!("/v1/files/{}/content", text_of(&file["id"])),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 200, "{name:?}");
    assert!(
        response.headers().get(header::SET_COOKIE).is_none(),
        "{name:?}"
    );
    let raw = response
        .headers()
        .get(header::CONTENT_DISPOSITION)
        .expect("Content-Disposition")
        .as_bytes();
    assert!(
        raw.iter().all(|b| (0x20..0x7f).contains(b)),
        "{name:?}: {raw:?}"
    );
    let disposition = std::str::from_utf8(raw).expect("ASCII");
    let (plain, decoded) = disposition_names(disposition);
    assert!(
        !plain.is_empty()
            && !plain
                .chars()
                .any(|c| matches!(c, '"' | '\\' | '/' | ';') || c.is_control()),
        "{name:?}: {disposition}"
    );
    if name.chars().count() <= 150 {
        assert_eq!(decoded, name, "{disposition}");
    } else {
        let extension = &name[name.rfind('.').expect("an extension")..];
        assert!(decoded.chars().count() <= 150, "{disposition}");
        assert!(decoded.ends_with(extension), "{disposition}");
        let stem = decoded.strip_suffix(extension).expect("extension");
        assert!(name.starts_with(stem), "{disposition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_keep_their_base_name_and_get_safe_headers() {
    let server = TestServer::new().await;
    let long = format!("{}.csv", "x".repeat(996));
    assert_eq!(long.chars().count(), 1000);
    // (name sent, name kept): a name keeps everything but its folders, which both `/` and `\`
    // separate (shared/API.md, "File names from clients").
    let names = [
        ("a\"b.csv", "a\"b.csv"),
        ("отчёт.xlsx", "отчёт.xlsx"),
        (long.as_str(), long.as_str()),
        ("../../etc/passwd.csv", "passwd.csv"),
        ("back\\slash;semi=colon%.csv", "slash;semi=colon%.csv"),
    ];
    for (name, kept) in names {
        // Quotes are escaped the way multipart parsers expect; every other byte is sent as is.
        let escaped = name.replace('"', "\\\"");
        let (content_type, body) = raw_multipart(escaped.as_bytes(), CSV);
        let response = server
            .request(ALICE, Method::POST, "/v1/files")
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("upload");
        let file = json_of(response, 201).await;
        assert_eq!(
            file["name"], kept,
            "the File keeps the name without its folders"
        );
        let path = text_of(&file["path"]);
        let in_sandbox = path.strip_prefix("/mnt/data/").expect("a sandbox path");
        assert!(
            !in_sandbox.contains('/') && !matches!(in_sandbox, "" | "." | ".."),
            "{path}"
        );
        assert_safe_disposition(&server, &file).await;
    }

    // A line break cannot travel inside a multipart header: it ends the header, so the part
    // has no file name at all (the quote never closes). A nameless upload has no type the
    // upload allowlist takes, so it is refused, and nothing of the injected header reaches
    // the response.
    let (content_type, body) = raw_multipart(b"line\r\nSet-Cookie: x=1.csv", CSV);
    let response = server
        .request(ALICE, Method::POST, "/v1/files")
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let refusal = json_of(response, 415).await;
    assert_eq!(refusal["error"]["code"], "unsupported", "{refusal:#}");
    assert!(!refusal.to_string().contains("Set-Cookie"), "{refusal:#}");

    // The sandbox can name files anything Linux allows, line breaks included: those names are
    // kept as the code wrote them and still make safe headers.
    let run = server
        .run_ok(
            ALICE,
            ("chat-1", "msg-1"),
            r#"
for name in ['line\r\nSet-Cookie: x=1.csv', 'a"b.csv', 'отчёт.xlsx', 'tab\there.csv']:
    open('/mnt/data/' + name, 'w').write('1,2\n')
"#,
            &[],
        )
        .await;
    let files = run["files"].as_array().expect("files");
    let registered: BTreeSet<&str> = files.iter().map(|file| text_of(&file["name"])).collect();
    assert_eq!(
        registered,
        BTreeSet::from([
            "line\r\nSet-Cookie: x=1.csv",
            "a\"b.csv",
            "отчёт.xlsx",
            "tab\there.csv"
        ]),
        "{run:#}"
    );
    for file in files {
        assert_safe_disposition(&server, file).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Large files stream in constant memory.
// ---------------------------------------------------------------------------------------------

/// Bytes of the large upload.
const LARGE_BYTES: u64 = 1 << 30;
/// Size of each generated piece of it.
const PIECE_BYTES: usize = 1 << 20;

/// The sha256 of the large upload, worked out once outside the test so that the test spends
/// no second pass of sha256 over a GiB in a debug build (about half a minute) on it:
///
/// ```text
/// python3 -c "import hashlib, struct; h = hashlib.sha256()
/// for i in range(1024): b = bytearray([i % 251]) * (1 << 20); b[:8] = struct.pack('>Q', i); h.update(b)
/// print(h.hexdigest())"
/// ```
const LARGE_SHA256: &str = "8caeae7158dba8490a7a6263ca66dc94d776824bd1129893531323d5f0717f9b";

/// Piece `index` of the large upload: not all alike, so that a misplaced piece changes the
/// hash.
fn piece(index: u64) -> Vec<u8> {
    let mut bytes = vec![(index % 251) as u8; PIECE_BYTES];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_goes_up_and_down_in_flat_memory() {
    let server = TestServer::with_config(|config| {
        config.limits.max_upload_bytes = bytesize::ByteSize::gib(2);
    })
    .await;
    let _measuring = MEMORY_MEASURE.lock().await;
    let rss_before = reset_memory_peak();

    // The upload is generated piece by piece while it is sent.
    let pieces = futures::stream::iter(0..LARGE_BYTES / PIECE_BYTES as u64)
        .map(|index| Ok::<_, std::io::Error>(bytes::Bytes::from(piece(index))));
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(pieces),
        LARGE_BYTES,
    )
    .file_name("large.csv");
    let form = reqwest::multipart::Form::new().part("file", part);
    let response = server
        .request(ALICE, Method::POST, "/v1/files")
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let file = json_of(response, 201).await;
    assert_eq!(file["size"], LARGE_BYTES);
    assert_eq!(file["sha256"], LARGE_SHA256);

    let response = server
        .get(
            ALICE,
            &format!("/v1/files/{}/content", text_of(&file["id"])),
        )
        .send()
        .await
        .expect("download");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        header_of(&response, header::CONTENT_LENGTH),
        LARGE_BYTES.to_string()
    );
    assert_eq!(
        header_of(&response, header::ETAG),
        format!("\"{LARGE_SHA256}\"")
    );
    // The download is compared byte for byte with the generator, whose bytes hash to
    // `LARGE_SHA256`: the same check as hashing the download, at the cost of a memcmp.
    let mut count = 0u64;
    let mut current: Option<(u64, Vec<u8>)> = None;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let mut chunk = &chunk.expect("a chunk")[..];
        while !chunk.is_empty() {
            let index = count / PIECE_BYTES as u64;
            if current.as_ref().is_none_or(|(at, _)| *at != index) {
                current = Some((index, piece(index)));
            }
            let (_, generated) = current.as_ref().expect("the current piece");
            let offset = (count % PIECE_BYTES as u64) as usize;
            let take = chunk.len().min(PIECE_BYTES - offset);
            assert!(
                chunk[..take] == generated[offset..offset + take],
                "the download differs within bytes {count}..{}",
                count + take as u64
            );
            chunk = &chunk[take..];
            count += take as u64;
        }
        assert!(count <= LARGE_BYTES, "more bytes than uploaded");
    }
    assert_eq!(count, LARGE_BYTES);

    // Measured on the development machine: a peak 16-29 MiB above the start over six runs
    // (the store's in-flight parts, the client's pieces, allocator slack). 48 MiB leaves room
    // for that noise while holding even 5% of the GiB in memory fails.
    assert_memory_flat(rss_before, 48 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_form_fields_are_refused_in_flat_memory() {
    // The upload route has no body limit (its file is streamed and capped on its own), so its
    // text fields must be capped too: ids are at most 128 characters, and a form that sends a
    // chat id of hundreds of MiB must be refused without holding it in memory.
    let server = TestServer::new().await;
    let _measuring = MEMORY_MEASURE.lock().await;
    let rss_before = reset_memory_peak();
    let field_bytes: u64 = 256 << 20;
    let pieces = futures::stream::iter(0..field_bytes / PIECE_BYTES as u64)
        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'c'; PIECE_BYTES])));
    let chat_id = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(pieces),
        field_bytes,
    );
    let form = reqwest::multipart::Form::new()
        .part("chat_id", chat_id)
        .part(
            "file",
            reqwest::multipart::Part::bytes(CSV.to_vec()).file_name("sales.csv"),
        );
    let sent = server
        .request(ALICE, Method::POST, "/v1/files")
        .multipart(form)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().as_u16() == 413 => {
            assert_error(response, 413, "too_large").await;
        }
        Ok(response) => {
            assert_error(response, 422, "invalid").await;
        }
        // The server may answer and close the connection before the client has sent the
        // whole field; the client then sees the refusal as a broken connection.
        Err(error) => assert!(!error.is_timeout(), "{error}"),
    };
    // Measured: about 3 MiB; holding an eighth of the 256 MiB field would fail.
    assert_memory_flat(rss_before, 32 << 20);
    let stored = files_below(&server.data_dir().join("blobs"));
    assert!(stored.is_empty(), "{stored:?}");
}
