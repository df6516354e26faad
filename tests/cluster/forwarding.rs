//! Requests forwarded to the holder: server-sent events, tool calls, a workspace's deletion,
//! and a Jupyter kernel with its WebSocket relayed.

use super::*;
use common::web::execute;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_and_tool_calls_are_forwarded() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        let message = "m-forwarded";
        let (node, _) = a
            .run(
                message,
                "open('/mnt/data/a.txt', 'w').write('kept')\nx = 41",
                &[],
            )
            .await;
        assert_eq!(node, a.instance);

        // A streamed run through B: the owner's events, in order, the Run last.
        let response = b
            .send(
                "a streamed run",
                b.run_request(
                    message,
                    "print('one', flush=True)\n\
                     print('two', flush=True)\n\
                     open('/mnt/data/stream.csv', 'w').write('n\\n1\\n')\n\
                     print(x)",
                    &[],
                )
                .header("Accept", "text/event-stream"),
            )
            .await;
        let response = ok_stream(response).await;
        assert_eq!(node_of(&response), a.instance, "the owner streamed it");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let body = within("the streamed run", response.text())
            .await
            .expect("the event stream");
        let events = parse_sse(&body);
        let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"done"), "{body}");
        assert_eq!(names.iter().filter(|name| **name == "done").count(), 1, "{body}");
        let first_file = names.iter().position(|name| *name == "file");
        let last_stdout = names.iter().rposition(|name| *name == "stdout");
        assert!(
            matches!((last_stdout, first_file), (Some(out), Some(file)) if out < file),
            "output streams before the files are registered: {names:?}"
        );
        let streamed: String = events
            .iter()
            .filter(|event| event.name == "stdout")
            .map(|event| text(&event.data["text"]))
            .collect();
        assert_eq!(streamed, "one\ntwo\n41\n", "{body}");
        let files: Vec<&Value> = events
            .iter()
            .filter(|event| event.name == "file")
            .map(|event| &event.data)
            .collect();
        assert_eq!(files.len(), 1, "{body}");
        assert_eq!(files[0]["name"], "stream.csv", "{body}");
        let done = &events.last().expect("events").data;
        assert_eq!(done["status"], "succeeded", "{done:#}");
        assert_eq!(done["stdout"], "one\ntwo\n41\n", "{done:#}");
        assert_eq!(done["workspace_restored"], false, "{done:#}");
        assert_eq!(done["kernel"]["restarted"], false, "{done:#}");
        assert_eq!(names_of(&done["files"]), ["stream.csv"], "{done:#}");
        // The streamed file downloads through either node.
        let stream_id = text(&files[0]["id"]).to_owned();
        for node in [a, b] {
            let (_, bytes) = node.get_bytes(&format!("/v1/files/{stream_id}/content")).await;
            assert_eq!(bytes, b"n\n1\n");
        }

        // A model's run_code through B runs in A's interpreter.
        let call = b
            .send(
                "a tool call",
                b.request(Method::POST, "/v1/tools/run_code").json(&json!({
                    "chat_id": CHAT,
                    "message_id": message,
                    "arguments": {"code": "x += 1\nprint(f'x is {x}')\nprint(open('/mnt/data/a.txt').read())"},
                })),
            )
            .await;
        let (node, answer) = json_answer(call, 200).await;
        assert_eq!(node, a.instance, "the owner ran the tool");
        let content = text(&answer["content"]);
        assert!(content.starts_with("status: succeeded"), "{content}");
        assert!(content.contains("x is 42"), "{content}");
        assert!(content.contains("kept"), "{content}");

        // Deleting the workspace through B removes it on A: the next run finds neither the
        // file nor the variables.
        let deleted = b
            .send(
                "a workspace deletion",
                b.request(Method::DELETE, &format!("/v1/messages/{message}/workspace")),
            )
            .await;
        let (node, body) = bytes_answer(deleted, 204).await;
        assert_eq!(node, a.instance, "the owner deleted it");
        assert_eq!(body, b"");
        let (_, fresh) = b
            .run(
                message,
                "import os\nprint(os.path.exists('/mnt/data/a.txt'))\nprint('x' in globals())",
                &[],
            )
            .await;
        assert_eq!(fresh["stdout"], "False\nFalse\n", "{fresh:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jupyter_kernel_started_through_the_other_node_is_the_owners_interpreter() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let (a, b) = (&cluster.a, &cluster.b);
        let message = "m-jupyter";
        let (node, _) = a.run(message, "x = 41", &[]).await;
        assert_eq!(node, a.instance);

        // The kernel of A's message, started through B, is A's.
        let started = b
            .send(
                "a kernel start",
                b.client
                    .post(format!("{}/jupyter/api/kernels", b.url))
                    .header("authorization", format!("token {TOKEN}"))
                    .json(&json!({"name": "python3", "env": {
                        "KERNEL_USERNAME": USER,
                        "KERNEL_CHAT_ID": CHAT,
                        "KERNEL_MESSAGE_ID": message,
                    }})),
            )
            .await;
        let (node, kernel) = json_answer(started, 201).await;
        assert_eq!(node, a.instance, "the owner started the kernel");
        let kernel_id = text(&kernel["id"]).to_owned();
        let shown = b
            .send(
                "a kernel's model",
                b.client.get(format!(
                    "{}/jupyter/api/kernels/{kernel_id}?token={TOKEN}",
                    b.url
                )),
            )
            .await;
        let (node, shown) = json_answer(shown, 200).await;
        assert_eq!(node, a.instance);
        assert_eq!(shown["id"], kernel_id.as_str());
        // Listed through either node: each puts every live node's kernels together, once.
        for node in [a, b] {
            let listed = node
                .send(
                    "the kernels",
                    node.client
                        .get(format!("{}/jupyter/api/kernels?token={TOKEN}", node.url)),
                )
                .await;
            let (_, listed) = json_answer(listed, 200).await;
            let ids: Vec<&str> = listed
                .as_array()
                .expect("a list")
                .iter()
                .map(|kernel| text(&kernel["id"]))
                .collect();
            assert_eq!(ids, [kernel_id.as_str()], "through node {}", node.name);
        }

        // Its channels, opened through B, reach the message's interpreter on A.
        let url = format!(
            "{}/jupyter/api/kernels/{kernel_id}/channels?token={TOKEN}",
            b.url.replace("http://", "ws://")
        );
        let (mut socket, upgrade) = within("the channels", tokio_tungstenite::connect_async(url))
            .await
            .expect("open the channels through B");
        let upgraded_by = upgrade
            .headers()
            .get("x-codebox-node")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let messages = execute(&mut socket, "y = x + 1\nprint(y)").await;
        let stdout: String = messages
            .iter()
            .filter(|message| {
                message["header"]["msg_type"] == "stream" && message["content"]["name"] == "stdout"
            })
            .filter_map(|message| message["content"]["text"].as_str())
            .collect();
        assert_eq!(stdout, "42\n", "{messages:#?}");
        let reply: Vec<&Value> = messages
            .iter()
            .filter(|message| message["header"]["msg_type"] == "execute_reply")
            .collect();
        assert_eq!(reply.len(), 1, "{messages:#?}");
        assert_eq!(reply[0]["content"]["status"], "ok", "{messages:#?}");
        drop(socket);

        // What the kernel did is the message's: a run through A sees it.
        let (node, run) = a.run(message, "print(y)", &[]).await;
        assert_eq!(node, a.instance);
        assert_eq!(run["stdout"], "42\n", "{run:#}");

        // Shut down through B, the kernel is gone on every node.
        let deleted = b
            .send(
                "a kernel shutdown",
                b.client
                    .delete(format!("{}/jupyter/api/kernels/{kernel_id}", b.url))
                    .header("authorization", format!("token {TOKEN}")),
            )
            .await;
        let (node, _) = bytes_answer(deleted, 204).await;
        assert_eq!(node, a.instance);
        for node in [a, b] {
            let gone = node
                .send(
                    "a kernel's model",
                    node.client.get(format!(
                        "{}/jupyter/api/kernels/{kernel_id}?token={TOKEN}",
                        node.url
                    )),
                )
                .await;
            assert_eq!(gone.status(), 404, "through node {}", node.name);
        }
        // The relayed WebSocket's handshake names the owner, as every forwarded answer does
        // (checked last, so that a failure here says the relay itself works).
        assert_eq!(
            upgraded_by.as_deref(),
            Some(a.instance.as_str()),
            "the 101 of channels relayed through B names the holder A ({}), not B ({})",
            a.instance,
            b.instance
        );
    })
    .await;
}
