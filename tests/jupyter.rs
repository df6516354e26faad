//! The Jupyter kernels API under `/jupyter`, driven as a Jupyter client drives it: REST to
//! manage kernels, the messaging protocol's JSON form over the channels WebSocket.

mod common;

use common::web::{Socket, execute};
use common::{ALICE, Caller, TENANT_A_TOKEN, TENANT_B_TOKEN, TestServer, assert_error, json_of};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn start_kernel(server: &TestServer, env: Value) -> String {
    let response = server
        .client
        .post(server.url("/jupyter/api/kernels"))
        .header("authorization", format!("token {TENANT_A_TOKEN}"))
        .json(&json!({"name": "python3", "env": env}))
        .send()
        .await
        .expect("start a kernel");
    let kernel = json_of(response, 201).await;
    assert_eq!(kernel["name"], "python3");
    assert_eq!(kernel["execution_state"], "idle");
    kernel["id"].as_str().expect("an id").to_owned()
}

async fn connect(server: &TestServer, kernel_id: &str) -> Socket {
    let url = format!(
        "{}/jupyter/api/kernels/{kernel_id}/channels?token={TENANT_A_TOKEN}",
        server.base_url.replace("http://", "ws://")
    );
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("open the channels");
    socket
}

fn of_type<'a>(messages: &'a [Value], msg_type: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|message| message["header"]["msg_type"] == msg_type)
        .collect()
}

#[tokio::test]
async fn a_jupyter_client_runs_code_gets_results_figures_and_links() {
    let server = TestServer::new().await;
    let kernel = start_kernel(
        &server,
        json!({"KERNEL_USERNAME": "alice", "KERNEL_CHAT_ID": "c1", "KERNEL_MESSAGE_ID": "m-jup"}),
    )
    .await;
    let mut socket = connect(&server, &kernel).await;

    let messages = execute(&mut socket, "x = 6\nprint('hi')\nx * 7").await;
    let types: Vec<&str> = messages
        .iter()
        .map(|message| message["header"]["msg_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types.first(), Some(&"status"), "{types:?}");
    assert_eq!(types.last(), Some(&"status"), "{types:?}");
    assert_eq!(messages[0]["content"]["execution_state"], "busy");
    assert_eq!(types[1], "execute_input");
    // Streams come in pieces, as Jupyter clients expect; they join them.
    let stdout: String = of_type(&messages, "stream")
        .iter()
        .filter(|message| message["content"]["name"] == "stdout")
        .filter_map(|message| message["content"]["text"].as_str())
        .collect();
    assert_eq!(stdout, "hi\n");
    let result = of_type(&messages, "execute_result");
    assert_eq!(result[0]["content"]["data"]["text/plain"], "42");
    assert_eq!(result[0]["channel"], "iopub");
    let reply = of_type(&messages, "execute_reply");
    assert_eq!(reply[0]["channel"], "shell");
    assert_eq!(reply[0]["content"]["status"], "ok");
    assert_eq!(reply[0]["content"]["execution_count"], 1);

    // A figure as base64 PNG, and the file the run wrote as a download link.
    let code = "import matplotlib.pyplot as plt\nplt.plot([x, x * 2])\n\
                open('/mnt/data/out.csv', 'w').write('a\\n1\\n')";
    let messages = execute(&mut socket, code).await;
    let shown = of_type(&messages, "display_data");
    assert_eq!(shown.len(), 2, "{messages:#?}");
    let png = shown[0]["content"]["data"]["image/png"]
        .as_str()
        .expect("a PNG");
    assert!(png.starts_with("iVBORw0KGgo"), "base64 of a PNG");
    let links = shown[1]["content"]["data"]["text/markdown"]
        .as_str()
        .expect("markdown links");
    assert!(links.contains("[out.csv]("), "{links}");
    let url = links
        .split("](")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("a link");
    let download = server.client.get(url).send().await.expect("download");
    assert_eq!(download.status(), 200);
    assert_eq!(download.text().await.expect("text"), "a\n1\n");

    // An error is an `error` message and an error reply, its traceback not also on stderr.
    let messages = execute(&mut socket, "1 / 0").await;
    let error = of_type(&messages, "error");
    assert_eq!(error[0]["content"]["ename"], "ZeroDivisionError");
    assert!(of_type(&messages, "stream").is_empty(), "{messages:#?}");
    let reply = of_type(&messages, "execute_reply");
    assert_eq!(reply[0]["content"]["status"], "error");
    assert_eq!(reply[0]["content"]["ename"], "ZeroDivisionError");

    // The kernel is the message's interpreter: the HTTP API sees the same state.
    let body = json!({"chat_id": "c1", "message_id": "m-jup", "code": "print(x)"});
    let run = json_of(server.run(ALICE, &body).await, 200).await;
    assert_eq!(run["stdout"], "6\n");

    // kernel_info, then shutting down: the kernel is gone for every later request.
    let info = json!({
        "header": {"msg_id": "k1", "msg_type": "kernel_info_request", "session": "s1"},
        "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell",
    });
    socket
        .send(Message::Text(info.to_string().into()))
        .await
        .expect("send");
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            panic!("no kernel_info_reply");
        };
        let message: Value = serde_json::from_str(&text).expect("JSON");
        if message["header"]["msg_type"] == "kernel_info_reply" {
            assert_eq!(message["content"]["language_info"]["name"], "python");
            break;
        }
    }
    let deleted = server
        .client
        .delete(server.url(&format!("/jupyter/api/kernels/{kernel}")))
        .header("authorization", format!("token {TENANT_A_TOKEN}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    let gone = server
        .client
        .get(server.url(&format!(
            "/jupyter/api/kernels/{kernel}?token={TENANT_A_TOKEN}"
        )))
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn jupyter_auth_is_a_service_token_and_kernels_stay_within_their_tenant() {
    let server = TestServer::new().await;
    for (auth, status) in [
        (None, 403),
        (Some("token wrong-token-0123456789".to_owned()), 403),
        (Some(format!("token {TENANT_A_TOKEN}")), 200),
        (Some(format!("Bearer {TENANT_A_TOKEN}")), 200),
    ] {
        let mut request = server.client.get(server.url("/jupyter/api/kernelspecs"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("kernelspecs");
        assert_eq!(response.status(), status);
    }
    let specs = server
        .client
        .get(server.url(&format!("/jupyter/api/kernelspecs?token={TENANT_A_TOKEN}")))
        .send()
        .await
        .expect("kernelspecs");
    let specs = json_of(specs, 200).await;
    assert_eq!(specs["default"], "python3");

    // Without names, a kernel is a message of its own.
    let kernel = start_kernel(&server, json!({})).await;
    for (token, status) in [(TENANT_A_TOKEN, 200), (TENANT_B_TOKEN, 404)] {
        let response = server
            .client
            .get(server.url(&format!("/jupyter/api/kernels/{kernel}?token={token}")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), status);
    }
    let listed = server
        .client
        .get(server.url(&format!("/jupyter/api/kernels?token={TENANT_B_TOKEN}")))
        .send()
        .await
        .expect("list");
    assert_eq!(json_of(listed, 200).await, json!([]));
    let refused = server
        .client
        .post(server.url(&format!("/jupyter/api/kernels?token={TENANT_A_TOKEN}")))
        .json(&json!({"name": "ruby"}))
        .send()
        .await
        .expect("start");
    assert_eq!(refused.status(), 404);
    let interrupted = server
        .client
        .post(server.url(&format!(
            "/jupyter/api/kernels/{kernel}/interrupt?token={TENANT_A_TOKEN}"
        )))
        .send()
        .await
        .expect("interrupt");
    assert_eq!(interrupted.status(), 204);
}

#[tokio::test]
async fn a_restarted_jupyter_kernel_starts_fresh() {
    let server = TestServer::new().await;
    let kernel = start_kernel(&server, json!({"KERNEL_USERNAME": "alice"})).await;
    let mut socket = connect(&server, &kernel).await;
    execute(&mut socket, "y = 1").await;
    let restarted = server
        .client
        .post(server.url(&format!(
            "/jupyter/api/kernels/{kernel}/restart?token={TENANT_A_TOKEN}"
        )))
        .send()
        .await
        .expect("restart");
    assert_eq!(restarted.status(), 200);
    let messages = execute(&mut socket, "'y' in globals()").await;
    let result = of_type(&messages, "execute_result");
    assert_eq!(result[0]["content"]["data"]["text/plain"], "False");
    assert_eq!(result[0]["content"]["execution_count"], 1);
}

#[tokio::test]
async fn a_kernels_user_is_checked_as_the_user_header_is() {
    // KERNEL_USERNAME names the user as X-User-Id does, so it meets the same rule: no NUL,
    // no control or space characters, at most 256 characters.
    let server = TestServer::new().await;
    for bad in ["al\u{0}ice", "al ice", "al\nice", "é", &"a".repeat(257)] {
        let response = server
            .client
            .post(server.url("/jupyter/api/kernels"))
            .header("authorization", format!("token {TENANT_A_TOKEN}"))
            .json(&json!({"name": "python3", "env": {"KERNEL_USERNAME": bad}}))
            .send()
            .await
            .expect("start a kernel");
        let message = assert_error(response, 422, "invalid").await;
        assert!(message.contains("KERNEL_USERNAME"), "{message}");
    }
    let response = server
        .get(
            Caller {
                token: TENANT_A_TOKEN,
                user: "al ice",
            },
            "/v1/files",
        )
        .send()
        .await
        .expect("list");
    assert_error(response, 422, "invalid").await;
}
