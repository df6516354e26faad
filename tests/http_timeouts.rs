//! The connection limits of `[server]` against clients that hold on to a connection: headers
//! trickled a byte at a time, a body that stalls, a download nobody reads, more connections
//! than the cap. Each case configures short limits and checks that the server lets go, and
//! that what an abandoned upload had staged is gone. A real server on a free port.

mod common;
mod raw;

use std::time::Duration;

use common::{ALICE, TENANT_A_TOKEN, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Reads from `stream` until the server closes it (end of stream or reset); false if it is
/// still open after `within`. Returns the bytes read too.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> (bool, u64) {
    let mut read_total = 0u64;
    let reading = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read_total += read as u64,
            }
        }
    };
    let closed = tokio::time::timeout(within, reading).await.is_ok();
    (closed, read_total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_a_byte_at_a_time_are_cut_off() {
    let server = TestServer::with_config(|config| {
        config.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = raw::connect(&server.base_url).await;
    let (mut reader, mut writer) = stream.split();
    let started = Instant::now();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: codebox.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut sink = Vec::new();
    let closing = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut sink));
    let (closed, ()) = tokio::join!(closing, trickle);
    assert!(closed.is_ok(), "the connection was still open after 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );

    // A kept-alive connection that sends no next request is let go the same way.
    let mut stream = raw::connect(&server.base_url).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: codebox.test\r\n\r\n")
        .await
        .expect("send");
    let response = raw::read_response(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(response.status, 200);
    let (closed, _) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "an idle kept-alive connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_answered_with_408_and_its_upload_is_removed() {
    let server = TestServer::with_config(|config| {
        config.server.body_read_timeout = Duration::from_secs(1);
        config.server.min_body_rate = bytesize::ByteSize::kib(64);
    })
    .await;
    // A JSON body trickled a byte every 200 ms.
    let mut stream = raw::connect(&server.base_url).await;
    let body = br#"{"chat_id": "chat-1", "message_id": "msg-1", "code": "print(1)"}"#;
    let head = format!(
        "{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        raw::head("POST", "/v1/runs", TENANT_A_TOKEN, ALICE.user),
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for byte in body {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let answer = async {
        let mut buffer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut buffer)).await;
        buffer
    };
    let (answer, ()) = tokio::join!(answer, trickle);
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");

    // An upload that sends part of its file and then stalls, holding the connection open.
    let blobs = server.data_dir().join("blobs");
    let mut stream = raw::connect(&server.base_url).await;
    let mut start = raw::form_start(
        &[("chat_id", "chat-1"), ("message_id", "msg-2")],
        b"stall.csv",
    );
    // 64 KiB earn the body one more second at the minimum rate; the store has made its staging
    // file as soon as the file began.
    start.extend_from_slice(&vec![b'x'; 64 << 10]);
    let head = format!(
        "{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        raw::head("POST", "/v1/files", TENANT_A_TOKEN, ALICE.user),
        raw::form_type(),
        start.len() + (10 << 20)
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    stream
        .write_all(&start)
        .await
        .expect("send part of the form");
    assert!(
        raw::eventually(Duration::from_secs(5), || !raw::files_below(&blobs)
            .is_empty())
        .await,
        "the upload never reached the store"
    );
    let response = raw::read_response(&mut stream, Duration::from_secs(15)).await;
    let message = response.assert_error(408, "timeout");
    assert!(message.contains("too slowly"), "{message}");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        raw::eventually(Duration::from_secs(5), || raw::files_below(&blobs)
            .is_empty())
        .await,
        "left behind: {:?}",
        raw::files_below(&blobs)
    );
    // The stalled client still holds its end: nothing of it stays on the server's side.
    let (closed, _) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the server kept the stalled upload's connection");

    // A body that keeps up the minimum rate is read whole however long it takes.
    let csv = vec![b'y'; 256 * 1024];
    let mut body = raw::form_start(&[], b"steady.csv");
    body.extend_from_slice(&csv);
    body.extend_from_slice(&raw::form_end());
    let mut stream = raw::connect(&server.base_url).await;
    let head = format!(
        "{}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        raw::head("POST", "/v1/files", TENANT_A_TOKEN, ALICE.user),
        raw::form_type(),
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    // 128 KiB/s, twice the minimum, for about 2 s: past the 1 s grace.
    for piece in body.chunks(16 * 1024) {
        stream.write_all(piece).await.expect("send a piece");
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
    let response = raw::read_response(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["size"], csv.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_reads_lets_its_connection_go() {
    let server = TestServer::with_config(|config| {
        config.server.idle_timeout = Duration::from_secs(1);
    })
    .await;
    // Larger than what the socket buffers on both sides hold.
    let size = 48usize << 20;
    let file = server
        .upload_ok(ALICE, "big.csv", &vec![b'z'; size], None)
        .await;
    let id = file["id"].as_str().expect("an id");
    let mut stream = raw::connect(&server.base_url).await;
    let head = format!(
        "{}\r\n\r\n",
        raw::head(
            "GET",
            &format!("/v1/files/{id}/content"),
            TENANT_A_TOKEN,
            ALICE.user
        )
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    // The client reads nothing for a while, then everything it can.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (closed, read) = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the server still held the connection");
    assert!(
        read < size as u64,
        "the whole download arrived ({read} bytes): the buffers took it all"
    );

    // A download that is read arrives whole, whatever the idle timeout.
    let response = server
        .get(ALICE, &format!("/v1/files/{id}/content"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.bytes().await.expect("the body").len(), size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let server = TestServer::with_config(|config| {
        config.server.max_connections = 2;
    })
    .await;
    // Two connections that send nothing take both places.
    let first = raw::connect(&server.base_url).await;
    let _second = raw::connect(&server.base_url).await;
    let mut third = raw::connect(&server.base_url).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: codebox.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut early = [0u8; 1];
    let answered = tokio::time::timeout(Duration::from_secs(1), third.read(&mut early)).await;
    assert!(
        answered.is_err(),
        "a third connection was served past a cap of two"
    );
    // Once one of them closes, the waiting connection is served.
    drop(first);
    let response = raw::read_response(&mut third, Duration::from_secs(5)).await;
    assert_eq!(response.status, 200);
}
