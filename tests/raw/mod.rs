//! HTTP written by hand over a plain TCP socket, for what no well-behaved client library sends:
//! paths with `.` and `..` segments, bodies cut short, headers announcing more than is sent,
//! bytes trickled one at a time. Also a capture of this test process's log lines, so that a
//! test can check what the server logged.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the socket.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as sent (no chunked decoding; the API's errors carry `Content-Length`).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {:?} {}",
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks that this is the API's error: `status`, JSON, `{"error": {"code", "message"}}`.
    /// Returns the message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "{:?} {}",
            self.headers,
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.header("content-type")
                .is_some_and(|value| value.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        let body = self.json();
        assert_eq!(
            body.as_object().map(|object| object.len()),
            Some(1),
            "{body}"
        );
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(!message.is_empty(), "{body}");
        message.to_owned()
    }
}

/// A connection to the server at `base_url` (`http://host:port`).
pub async fn connect(base_url: &str) -> TcpStream {
    TcpStream::connect(base_url.trim_start_matches("http://"))
        .await
        .expect("connect to the server")
}

/// Reads one response from `stream`: its head, then `Content-Length` bytes of body (or up to
/// the end of the stream when there is none). Panics if it does not arrive within `within`.
pub async fn read_response(stream: &mut TcpStream, within: Duration) -> RawResponse {
    tokio::time::timeout(within, read_response_inner(stream))
        .await
        .unwrap_or_else(|_| panic!("no response within {within:?}"))
}

async fn read_response_inner(stream: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.expect("read the response");
        assert!(
            read > 0,
            "the connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = buffer[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    match length {
        Some(length) => {
            while body.len() < length {
                let mut chunk = vec![0u8; length - body.len()];
                let read = stream.read(&mut chunk).await.expect("read the body");
                assert!(read > 0, "the body was cut short");
                body.extend_from_slice(&chunk[..read]);
            }
        }
        None => {
            let _ = stream.read_to_end(&mut body).await;
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body`, with
/// `Connection: close`, and reads the response.
pub async fn exchange(base_url: &str, head: &str, body: &[u8]) -> RawResponse {
    let mut stream = connect(base_url).await;
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the head");
    stream.write_all(body).await.expect("send the body");
    read_response(&mut stream, Duration::from_secs(30)).await
}

/// The head of a request as `token` for `user`, to which more headers may be added.
pub fn head(method: &str, path: &str, token: &str, user: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: codebox.test\r\nAuthorization: Bearer {token}\r\nX-User-Id: {user}"
    )
}

/// The boundary of the forms built here.
pub const BOUNDARY: &str = "codebox-raw-boundary-5e1f";

/// The start of a multipart form whose text fields come first and whose file part begins:
/// everything up to the file's first byte.
pub fn form_start(fields: &[(&str, &str)], filename: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; filename=\"");
    body.extend_from_slice(filename);
    body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    body
}

/// The end of a form begun by [`form_start`], after the file's last byte.
pub fn form_end() -> Vec<u8> {
    format!("\r\n--{BOUNDARY}--\r\n").into_bytes()
}

/// The `Content-Type` of the forms built here.
pub fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// Every regular file below `folder` (none if it does not exist).
pub fn files_below(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_below(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Polls `check` every 50 ms until it holds; false if it did not within `within`.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every log line this test process wrote so far (the servers run in it). The first call
/// installs the capture as the process's subscriber.
pub fn captured_log() -> String {
    let buffer = log_buffer();
    let bytes = buffer.lock().map(|bytes| bytes.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Installs the log capture (idempotent); call it before the server under test starts.
pub fn capture_log() {
    let _ = log_buffer();
}

fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || LogWriter(writer.clone()))
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other subscriber in this test binary");
            buffer
        })
        .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
