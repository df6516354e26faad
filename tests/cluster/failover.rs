//! The holder gone: killed (its heartbeat lapses) or stopped (its row goes at once), the
//! other node takes its messages over and rebuilds their workspaces; killed with a fresh
//! heartbeat, its messages wait for it (503 to retry), not taken over early.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_mid_run_leaves_the_other_node_serving_and_restores_the_workspace() {
    with_database(|catalog| async move {
        let mut cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let message = "m-killed";
        let out: Vec<u8> = CSV.to_ascii_uppercase();

        // The message is A's: its attachment uploaded and an output registered through A.
        let (node, upload) = cluster.a.upload("sales.csv", CSV, Some(message)).await;
        assert_eq!(node, cluster.a.instance);
        assert_eq!(upload["path"], "/mnt/data/sales.csv", "{upload:#}");
        let upload_id = text(&upload["id"]).to_owned();
        let (node, written) = cluster
            .a
            .run(
                message,
                "data = open('/mnt/data/sales.csv').read()\n\
                 open('/mnt/data/out.csv', 'w').write(data.upper())\n\
                 x = 1",
                &[],
            )
            .await;
        assert_eq!(node, cluster.a.instance);
        let out_id = text(&file_named(&written["files"], "out.csv")["id"]).to_owned();

        // A long run on A, streamed so that the test knows its code has started.
        let response = cluster
            .a
            .send(
                "a long run",
                cluster
                    .a
                    .run_request(
                        message,
                        "print('sleeping', flush=True)\nimport time\ntime.sleep(60)",
                        &[],
                    )
                    .header("Accept", "text/event-stream"),
            )
            .await;
        let response = ok_stream(response).await;
        let mut stream = response.bytes_stream();
        let mut seen = String::new();
        within("the long run to start", async {
            while !seen.contains("sleeping") {
                let chunk = stream
                    .next()
                    .await
                    .expect("more events")
                    .expect("a chunk");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;

        cluster.a.kill().await;
        // The killed run's own call ends without an answer.
        let rest = within("the killed run's stream to end", async {
            let mut rest = String::new();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => rest.push_str(&String::from_utf8_lossy(&chunk)),
                    Err(_) => break,
                }
            }
            rest
        })
        .await;
        assert!(
            !format!("{seen}{rest}").contains("event: done"),
            "a killed node answered its run: {seen}{rest}"
        );

        let b = &cluster.b;
        // At once, before A's heartbeat has lapsed, B lists and downloads the message's files.
        let (node, listing) = b
            .get_json(&format!("/v1/messages/{message}/files?source=all"))
            .await;
        assert_eq!(node, b.instance);
        assert_eq!(
            names_of(&listing["files"]),
            ["out.csv", "sales.csv"],
            "{listing:#}"
        );
        let (node, bytes) = b.get_bytes(&format!("/v1/files/{out_id}/content")).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, out);
        let (_, bytes) = b.get_bytes(&format!("/v1/files/{upload_id}/content")).await;
        assert_eq!(bytes, CSV);
        let link = text(&file_named(&listing["files"], "out.csv")["download_url"]).to_owned();
        let (node, bytes) = b.get_link(&link).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, out);

        // Once A's heartbeat is older than node_timeout, B takes the message over and rebuilds
        // its workspace: the attachment and the registered output, not the variables.
        tokio::time::sleep(Duration::from_secs(NODE_TIMEOUT_SECS + 2)).await;
        let (node, restored) = b
            .run(
                message,
                "print(open('/mnt/data/sales.csv').read(), end='')\n\
                 print('--')\n\
                 print(open('/mnt/data/out.csv').read(), end='')\n\
                 print('--')\n\
                 print('x' in globals())",
                &[],
            )
            .await;
        assert_taken_over(&node, b, &restored);
        assert_eq!(
            restored["stdout"],
            format!(
                "{}--\n{}--\nFalse\n",
                String::from_utf8_lossy(CSV),
                String::from_utf8_lossy(&out)
            ),
            "{restored:#}"
        );
        assert_eq!(
            restored["files"],
            json!([]),
            "files put back are not registered again: {restored:#}"
        );
        // The run A was killed in is no longer `running`: the takeover failed it.
        let runs = runs_of(&catalog, message).await;
        assert_eq!(
            runs.iter().filter(|(status, _)| status == "running").count(),
            0,
            "{runs:?}"
        );
        let interrupted: Vec<_> = runs
            .iter()
            .filter(|(status, _)| status == "failed")
            .collect();
        assert_eq!(interrupted.len(), 1, "{runs:?}");
        assert!(
            interrupted[0].1.as_deref().is_some_and(|reason| reason.contains("stopped")),
            "{runs:?}"
        );
        let (_, after) = b
            .get_json(&format!("/v1/messages/{message}/files?source=all"))
            .await;
        assert_eq!(
            names_of(&after["files"]),
            ["out.csv", "sales.csv"],
            "{after:#}"
        );

        // The message is B's now: the next run is at home, in the same interpreter.
        let (node, again) = b
            .run(message, "print(open('/mnt/data/out.csv').read() == open('/mnt/data/sales.csv').read().upper())", &[])
            .await;
        assert_eq!(node, b.instance);
        assert_eq!(again["stdout"], "True\n", "{again:#}");
        assert_eq!(again["workspace_restored"], false, "{again:#}");
        assert_eq!(again["kernel"]["restarted"], false, "{again:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_message_over_at_once() {
    with_database(|catalog| async move {
        // A heartbeat that never lapses within the test: only the stop can hand over.
        let mut cluster = Cluster::start(&catalog, "10m").await;
        let message = "m-handover";
        // An upload of the user's own, attached by the run (file_ids).
        let (_, upload) = cluster.a.upload("sales.csv", CSV, None).await;
        let upload_id = text(&upload["id"]).to_owned();
        let (node, written) = cluster
            .a
            .run(
                message,
                "open('/mnt/data/totals.csv', 'w').write('units\\n8\\n')\nx = 1",
                &[upload_id.as_str()],
            )
            .await;
        assert_eq!(node, cluster.a.instance);
        file_named(&written["files"], "totals.csv");
        let (a, b) = (cluster.a.instance.clone(), cluster.b.instance.clone());
        let mut both = vec![(a.clone(), true, false), (b.clone(), true, true)];
        both.sort();
        assert_eq!(
            cluster.b.nodes().await,
            both,
            "both nodes live, listed by either"
        );

        cluster.a.stop().await;
        assert_eq!(
            cluster.b.nodes().await,
            [(b, true, true)],
            "a stopped node takes its row with it"
        );

        let b = &cluster.b;
        let (node, restored) = b
            .run(
                message,
                "print(open('/mnt/data/sales.csv').read(), end='')\n\
                 print(open('/mnt/data/totals.csv').read(), end='')\n\
                 print('x' in globals())",
                &[],
            )
            .await;
        assert_taken_over(&node, b, &restored);
        assert_eq!(
            restored["stdout"],
            format!("{}units\n8\nFalse\n", String::from_utf8_lossy(CSV)),
            "{restored:#}"
        );
        assert_eq!(restored["files"], json!([]), "{restored:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_whose_heartbeat_is_still_fresh_keeps_its_message() {
    with_database(|catalog| async move {
        // A heartbeat that does not lapse within the test: the killed owner is still alive as
        // far as the catalog knows, and B must not take its message.
        let mut cluster = Cluster::start(&catalog, "10m").await;
        let message = "m-fresh";
        let (node, written) = cluster
            .a
            .run(
                message,
                "open('/mnt/data/kept.csv', 'w').write('a\\n1\\n')",
                &[],
            )
            .await;
        assert_eq!(node, cluster.a.instance);
        let kept_id = text(&file_named(&written["files"], "kept.csv")["id"]).to_owned();
        cluster.a.kill().await;

        let b = &cluster.b;
        // What would touch the workspace is refused, to be retried: a run, a tool call, a
        // workspace deletion.
        let refusals = [
            b.run_request(message, "print('two holders')", &[]),
            b.request(Method::POST, "/v1/tools/run_code").json(&json!({
                "chat_id": CHAT,
                "message_id": message,
                "arguments": {"code": "print('two holders')"},
            })),
            b.request(Method::DELETE, &format!("/v1/messages/{message}/workspace")),
        ];
        for request in refusals {
            let refused = b.send("a request for A's message", request).await;
            let url = refused.url().clone();
            assert_eq!(node_of(&refused), b.instance, "{url}");
            assert!(
                refused.headers().contains_key("retry-after"),
                "{url}: {:?}",
                refused.headers()
            );
            common::assert_error(refused, 503, "busy").await;
        }
        // What needs no holder is served.
        let (node, listing) = b.get_json(&format!("/v1/messages/{message}/files")).await;
        assert_eq!(node, b.instance);
        assert_eq!(names_of(&listing["files"]), ["kept.csv"], "{listing:#}");
        let (_, bytes) = b.get_bytes(&format!("/v1/files/{kept_id}/content")).await;
        assert_eq!(bytes, b"a\n1\n");

        // The message is still A's, and nothing ran for it on B.
        let runs = runs_of(&catalog, message).await;
        assert_eq!(runs, [("succeeded".to_owned(), None)], "{runs:?}");
        let holder: Option<String> = {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&catalog)
                .await
                .expect("connect to the catalog");
            let holder = sqlx::query_scalar("SELECT node FROM messages WHERE message_id = $1")
                .bind(message)
                .fetch_one(&mut connection)
                .await
                .expect("read the catalog's message");
            connection.close().await.ok();
            holder
        };
        assert_eq!(holder.as_deref(), Some(cluster.a.instance.as_str()));
    })
    .await;
}

/// `run`, served by `node`, is the first on `by` after it took the message over: the
/// workspace rebuilt, in a fresh interpreter.
fn assert_taken_over(node: &str, by: &Node, run: &Value) {
    assert_eq!(
        node, by.instance,
        "{} took the message over: {run:#}",
        by.name
    );
    assert_eq!(run["workspace_restored"], true, "{run:#}");
    assert_eq!(run["kernel"]["restarted"], true, "{run:#}");
}
