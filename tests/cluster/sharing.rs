//! What the two nodes share: one message's workspace and interpreter whichever node a run
//! reaches, and files registered through one node, listed, rendered and downloaded through
//! the other.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_message_sent_alternately_land_in_one_workspace() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        // Every answer names the node that served it, whatever it is.
        let (served, _) = a.get_json("/healthz").await;
        assert_eq!(served, a.instance);
        let (served, _) = b.get_json("/healthz").await;
        assert_eq!(served, b.instance);

        let message = "m-alternate";
        let (node, first) = a
            .run(
                message,
                "import uuid\n\
                 open('/mnt/data/a.txt', 'w').write('written through A')\n\
                 x = 41\n\
                 token = uuid.uuid4().hex\n\
                 print(token)",
                &[],
            )
            .await;
        assert_eq!(node, a.instance, "the first run's node owns the message");
        let token = text(&first["stdout"]).trim().to_owned();
        assert_eq!(token.len(), 32, "{first:#}");

        // Through B: forwarded to A, into the same interpreter and the same /mnt/data.
        let (node, second) = b
            .run(
                message,
                "print(open('/mnt/data/a.txt').read())\n\
                 print(x + 1)\n\
                 print(token)\n\
                 open('/mnt/data/b.txt', 'w').write('written through B')\n\
                 x += 1",
                &[],
            )
            .await;
        assert_eq!(node, a.instance, "the owner did the work: {second:#}");
        assert_eq!(
            second["stdout"],
            format!("written through A\n42\n{token}\n"),
            "{second:#}"
        );

        // Through A again: what the run through B did is there.
        let (node, third) = a
            .run(
                message,
                "print(open('/mnt/data/b.txt').read())\nprint(x)\nprint(token)",
                &[],
            )
            .await;
        assert_eq!(node, a.instance, "{third:#}");
        assert_eq!(
            third["stdout"],
            format!("written through B\n42\n{token}\n"),
            "{third:#}"
        );

        // One interpreter throughout, never a rebuilt workspace, three distinct runs.
        let runs = [&first, &second, &third];
        for run in runs {
            assert_eq!(run["workspace_restored"], false, "{run:#}");
        }
        for run in &runs[1..] {
            assert_eq!(run["kernel"]["restarted"], false, "{run:#}");
        }
        let counts: Vec<u64> = runs
            .iter()
            .map(|run| {
                run["kernel"]["execution_count"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("an execution count: {run:#}"))
            })
            .collect();
        assert!(
            counts.windows(2).all(|pair| pair[0] < pair[1]),
            "one interpreter counts on: {counts:?}"
        );
        let mut ids: Vec<&str> = runs.iter().map(|run| text(&run["id"])).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three runs: {ids:?}");

        // Each run's record reads back through either node.
        for node in [a, b] {
            for run in runs {
                let (_, record) = node
                    .get_json(&format!("/v1/runs/{}", text(&run["id"])))
                    .await;
                assert_eq!(record["status"], "succeeded", "{record:#}");
                assert_eq!(record["stdout"], run["stdout"], "{record:#}");
            }
        }

        // A forwarded request is logged by both nodes under one request id, the relaying
        // node's line naming the holder that did the work.
        let traced = b
            .run_request(message, "print(1)", &[])
            .header("x-request-id", "trace-7");
        let (node, _) = json_answer(b.send("a traced run", traced).await, 200).await;
        assert_eq!(node, a.instance);
        // Log lines are read from the processes' stderr as they come: wait for them.
        let line_of = |node: &Node| {
            let log = node.log.clone();
            within("the request's log line", async move {
                loop {
                    let found = log
                        .lock()
                        .expect("log lines")
                        .iter()
                        .find(|line| line.contains("trace-7") && line.contains("/v1/runs"))
                        .cloned();
                    match found {
                        Some(line) => return line,
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        let (relayed, served) = (line_of(b).await, line_of(a).await);
        assert!(relayed.contains(&a.instance), "{relayed}");
        assert!(served.contains(&a.instance), "{served}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_registered_through_one_node_downloads_through_the_other() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        let message = "m-report";
        let report: &[u8] = b"region,units\nnorth,3\nsouth,5\n";
        let (node, run) = a
            .run(
                message,
                "open('/mnt/data/report.csv', 'w').write('region,units\\nnorth,3\\nsouth,5\\n')",
                &[],
            )
            .await;
        assert_eq!(node, a.instance);
        let registered = file_named(&run["files"], "report.csv");
        let id = text(&registered["id"]).to_owned();
        assert_eq!(registered["source"], "code_execution", "{run:#}");
        assert_eq!(registered["path"], "/mnt/data/report.csv", "{run:#}");
        let link_of_a = text(&registered["download_url"]).to_owned();
        assert!(link_of_a.starts_with(&a.url), "{link_of_a}");

        // B lists it, from the shared catalog; B serves these itself.
        let (node, listing) = b.get_json(&format!("/v1/messages/{message}/files")).await;
        assert_eq!(node, b.instance, "a listing needs no owner");
        assert_eq!(names_of(&listing["files"]), ["report.csv"], "{listing:#}");
        let listed = file_named(&listing["files"], "report.csv");
        assert_eq!(listed["id"], id.as_str());
        assert_eq!(listed["size"], report.len(), "{listed:#}");
        assert_eq!(
            listed["sha256"],
            common::web::sha256_hex(report),
            "{listed:#}"
        );
        let (node, chat) = b.get_json(&format!("/v1/chats/{CHAT}/files")).await;
        assert_eq!(node, b.instance);
        assert_eq!(chat["total_files"], 1, "{chat:#}");
        let (node, metadata) = b.get_json(&format!("/v1/files/{id}")).await;
        assert_eq!(node, b.instance);
        assert_eq!(metadata["name"], "report.csv", "{metadata:#}");

        // Downloads through B: with the token, by B's signed link, and by A's link sent to B
        // (the nodes share the signing secret), all from the shared bucket.
        let (node, bytes) = b.get_bytes(&format!("/v1/files/{id}/content")).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, report);
        let link_of_b = text(&listed["download_url"]).to_owned();
        assert!(
            link_of_b.starts_with(&b.url),
            "B signs links to itself: {link_of_b}"
        );
        let (node, bytes) = b.get_link(&link_of_b).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, report);
        let a_link_to_b = format!("{}{}", b.url, &link_of_a[a.url.len()..]);
        let (node, bytes) = b.get_link(&a_link_to_b).await;
        assert_eq!(node, b.instance);
        assert_eq!(bytes, report);

        // A model's reference to the file renders through B to a link that downloads it.
        let rendered = b
            .send(
                "a render",
                b.request(Method::POST, &format!("/v1/messages/{message}/render"))
                    .json(&json!({"text": "See sandbox:/mnt/data/report.csv for the numbers."})),
            )
            .await;
        let (node, rendered) = json_answer(rendered, 200).await;
        assert_eq!(node, b.instance);
        let (masked, links) = mask_links(text(&rendered["text"]), &b.url);
        assert_eq!(
            masked,
            format!("See <link:{id}> for the numbers."),
            "{rendered:#}"
        );
        assert_eq!(links.len(), 1);
        let (_, bytes) = b.get_link(&links[0]).await;
        assert_eq!(bytes, report);

        // Even an error names the node that answered it.
        let missing = b
            .send(
                "a missing file",
                b.request(Method::GET, "/v1/files/file_0000000000000000000000000000"),
            )
            .await;
        assert_eq!(node_of(&missing), b.instance);
        assert!(missing.status().is_client_error(), "{}", missing.status());
    })
    .await;
}
