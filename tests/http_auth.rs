//! The HTTP API end to end (authorization, signed links, message binding), as a chat backend
//! sees it: a server in this process on a free local port, the real Docker engine, a real
//! SQLite file and the local blob folder, `reqwest` as the client. Nothing is mocked; no test
//! asserts how long anything took. Shared helpers are in `common/web.rs`.

mod common;

use std::collections::BTreeMap;

use codebox::api::signing::LinkSubject;
use common::web::*;
use common::{
    ADMIN_TOKEN, ALICE, ALICE_OF_B, BOB, Caller, TENANT_A_TOKEN, TestServer, assert_error, json_of,
    msg_id, tenant_id,
};
use reqwest::{Method, Url, header};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// 2. Authorization.
// ---------------------------------------------------------------------------------------------

/// One request of the matrix: a method, a path and an optional JSON body.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl Call {
    fn new(method: Method, path: impl Into<String>, body: Option<Value>) -> Self {
        Self {
            method,
            path: path.into(),
            body,
        }
    }

    /// The request with these headers: `token` as bearer (if any), `user` as `X-User-Id` (if
    /// any).
    async fn send(
        &self,
        server: &TestServer,
        token: Option<&str>,
        user: Option<&str>,
    ) -> reqwest::Response {
        let mut request = server
            .client
            .request(self.method.clone(), server.url(&self.path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        request.send().await.expect("send")
    }
}

/// An upload tied to `chat-1`/`msg-1`, with these headers.
async fn upload_as(
    server: &TestServer,
    token: Option<&str>,
    user: Option<&str>,
) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(CSV.to_vec()).file_name("probe.csv");
    let form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("chat_id", "chat-1")
        .text("message_id", "msg-1");
    let mut request = server.client.post(server.url("/v1/files")).multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    request.send().await.expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_route_hides_other_owners_and_checks_credentials() {
    let server = TestServer::new().await;
    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let csv_id = text_of(&csv["id"]).to_owned();
    let run = server
        .run_ok(ALICE, ("chat-1", "msg-1"), XLSX_FROM_CSV, &[&csv_id])
        .await;
    let run_id = text_of(&run["id"]).to_owned();
    let xlsx_id = text_of(&run["files"][0]["id"]).to_owned();
    let workspace_id = server.workspace_id("tenant-a", "msg-1").await;

    // Every user-scoped route aimed at Alice's things.
    let owned = |probe: &str| {
        vec![
            Call::new(Method::GET, format!("/v1/files/{csv_id}"), None),
            Call::new(Method::GET, format!("/v1/files/{xlsx_id}"), None),
            Call::new(Method::GET, format!("/v1/files/{csv_id}/content"), None),
            Call::new(Method::GET, format!("/v1/files/{xlsx_id}/content"), None),
            Call::new(Method::DELETE, format!("/v1/files/{csv_id}"), None),
            Call::new(Method::DELETE, format!("/v1/files/{xlsx_id}"), None),
            Call::new(Method::GET, format!("/v1/runs/{run_id}"), None),
            Call::new(Method::GET, "/v1/messages/msg-1/files", None),
            Call::new(Method::GET, "/v1/messages/msg-1/files?source=all", None),
            Call::new(Method::GET, "/v1/chats/chat-1/files", None),
            Call::new(
                Method::POST,
                "/v1/messages/msg-1/render",
                Some(json!({ "text": "see sandbox:/mnt/data/report.xlsx" })),
            ),
            Call::new(Method::DELETE, "/v1/messages/msg-1/workspace", None),
            // Attaching Alice's file to a fresh message of the caller.
            Call::new(
                Method::POST,
                "/v1/runs",
                Some(json!({
                    "chat_id": format!("chat-{probe}"),
                    "message_id": format!("msg-{probe}"),
                    "code": "print(open('/mnt/data/sales.csv').read())",
                    "file_ids": [csv_id],
                })),
            ),
        ]
    };
    // Runs in Alice's message, and uploads into it: only another user of her tenant can name
    // it, since message ids are the tenant's own namespace (checked below).
    let reuse_message = Call::new(
        Method::POST,
        "/v1/runs",
        Some(json!({
            "chat_id": "chat-1",
            "message_id": "msg-1",
            "code": "import os; print(os.listdir('/mnt/data'))",
        })),
    );

    for (index, other) in [BOB, ALICE_OF_B].into_iter().enumerate() {
        for call in owned(&format!("probe-{index}")) {
            let response = call
                .send(&server, Some(other.token), Some(other.user))
                .await;
            let context = format!("{other:?} {} {}", call.method, call.path);
            assert_eq!(response.status().as_u16(), 404, "{context}");
            assert_error(response, 404, "not_found").await;
        }
    }
    let response = reuse_message
        .send(&server, Some(BOB.token), Some(BOB.user))
        .await;
    assert_error(response, 404, "not_found").await;
    let response = upload_as(&server, Some(BOB.token), Some(BOB.user)).await;
    assert_error(response, 404, "not_found").await;

    // The probes bound nothing: the fresh messages that tried to attach Alice's file do not
    // exist, and Alice's message is still hers.
    for probe in ["msg-probe-0", "msg-probe-1"] {
        for tenant in ["tenant-a", "tenant-b"] {
            let message = server
                .state
                .supervisor
                .catalog()
                .messages()
                .get(&tenant_id(tenant), &msg_id(probe))
                .await
                .expect("catalog");
            assert!(message.is_none(), "{tenant}/{probe}: {message:?}");
        }
    }

    // Credentials: no token or an unknown one is 401, a missing X-User-Id 422, an admin token
    // on a user route 403. Alice's own routes and an upload are all checked.
    let mut calls = owned("creds");
    calls.push(reuse_message.clone());
    let bad_tokens = [
        "not-a-configured-token-0123",
        "svc-tenant-a-0123456789abcdeX",
    ];
    for call in &calls {
        let context = format!("{} {}", call.method, call.path);
        let response = call.send(&server, None, Some("alice")).await;
        assert_error(response, 401, "unauthorized").await;
        for bad in bad_tokens {
            let response = call.send(&server, Some(bad), Some("alice")).await;
            assert_eq!(response.status().as_u16(), 401, "{context} with {bad}");
            assert_error(response, 401, "unauthorized").await;
        }
        let response = call.send(&server, Some(TENANT_A_TOKEN), None).await;
        assert_eq!(
            response.status().as_u16(),
            422,
            "{context} without X-User-Id"
        );
        assert_error(response, 422, "invalid").await;
        let response = call
            .send(&server, Some(TENANT_A_TOKEN), Some("al ice"))
            .await;
        assert_eq!(
            response.status().as_u16(),
            422,
            "{context} with a bad X-User-Id"
        );
        assert_error(response, 422, "invalid").await;
        let response = call.send(&server, Some(ADMIN_TOKEN), Some("alice")).await;
        assert_eq!(
            response.status().as_u16(),
            403,
            "{context} with the admin token"
        );
        assert_error(response, 403, "forbidden").await;
    }
    let response = upload_as(&server, None, Some("alice")).await;
    assert_error(response, 401, "unauthorized").await;
    let response = upload_as(&server, Some(bad_tokens[0]), Some("alice")).await;
    assert_error(response, 401, "unauthorized").await;
    let response = upload_as(&server, Some(TENANT_A_TOKEN), None).await;
    assert_error(response, 422, "invalid").await;
    let response = upload_as(&server, Some(ADMIN_TOKEN), Some("alice")).await;
    assert_error(response, 403, "forbidden").await;
    // A token in another scheme is not a bearer token.
    let response = server
        .client
        .get(server.url(&format!("/v1/files/{csv_id}")))
        .header(header::AUTHORIZATION, format!("Basic {TENANT_A_TOKEN}"))
        .header("x-user-id", "alice")
        .send()
        .await
        .expect("get");
    assert_error(response, 401, "unauthorized").await;

    // Admin routes: a service token is forbidden, no token or an unknown one unauthorized.
    let admin_calls = [
        Call::new(Method::GET, "/v1/admin/workspaces", None),
        Call::new(
            Method::POST,
            "/v1/admin/gc",
            Some(json!({ "dry_run": true })),
        ),
        Call::new(Method::GET, "/v1/admin/retention", None),
        Call::new(Method::GET, "/v1/admin/nodes", None),
    ];
    for call in &admin_calls {
        let context = format!("{} {}", call.method, call.path);
        for service in [TENANT_A_TOKEN, common::TENANT_B_TOKEN] {
            let response = call.send(&server, Some(service), Some("alice")).await;
            assert_eq!(response.status().as_u16(), 403, "{context}");
            assert_error(response, 403, "forbidden").await;
        }
        let response = call.send(&server, None, None).await;
        assert_error(response, 401, "unauthorized").await;
        let response = call.send(&server, Some(bad_tokens[0]), None).await;
        assert_error(response, 401, "unauthorized").await;
        let response = call.send(&server, Some(ADMIN_TOKEN), None).await;
        assert_eq!(response.status().as_u16(), 200, "{context} as admin");
    }

    // None of the refused calls changed anything of Alice's.
    for id in [&csv_id, &xlsx_id] {
        let response = server
            .get(ALICE, &format!("/v1/files/{id}"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status().as_u16(), 200, "{id} survived");
    }
    let listing = server
        .get(ALICE, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    assert_eq!(
        ids_of(&json_of(listing, 200).await["files"]),
        [csv_id.as_str(), xlsx_id.as_str()],
        "no upload of Bob's joined the message"
    );
    assert!(container_exists(&workspace_id), "the sandbox survived");
    assert!(server.workspace_dir(&workspace_id).exists());
    let mine = reuse_message
        .send(&server, Some(ALICE.token), Some(ALICE.user))
        .await;
    let mine = json_of(mine, 200).await;
    assert!(
        text_of(&mine["stdout"]).contains("report.xlsx"),
        "Alice still works in her workspace: {mine:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_are_each_tenants_own() {
    // Message ids are chosen by each tenant's chat backend, so two tenants may pick the same
    // one: the other tenant's `msg-1` is a message of its own, which sees nothing of Alice's.
    let server = TestServer::new().await;
    let csv = server
        .upload_ok(ALICE, "sales.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    server
        .run_ok(
            ALICE,
            ("chat-1", "msg-1"),
            XLSX_FROM_CSV,
            &[text_of(&csv["id"])],
        )
        .await;

    let theirs = server
        .upload_ok(ALICE_OF_B, "theirs.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    let run = server
        .run_ok(
            ALICE_OF_B,
            ("chat-1", "msg-1"),
            "import os; print(sorted(os.listdir('/mnt/data')))",
            &[],
        )
        .await;
    // Only the file tenant B uploaded with its own msg-1 is there.
    assert_eq!(run["stdout"], "['theirs.csv']\n", "{run:#}");
    let listing = server
        .get(ALICE_OF_B, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    assert_eq!(
        ids_of(&json_of(listing, 200).await["files"]),
        [text_of(&theirs["id"])]
    );
    let listing = server
        .get(ALICE, "/v1/messages/msg-1/files?source=all")
        .send()
        .await
        .expect("list");
    let listing = json_of(listing, 200).await;
    let names: Vec<&str> = listing["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| text_of(&file["name"]))
        .collect();
    assert_eq!(names, ["sales.csv", "report.xlsx"]);
    assert_ne!(
        server.workspace_id("tenant-a", "msg-1").await,
        server.workspace_id("tenant-b", "msg-1").await
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Signed links.
// ---------------------------------------------------------------------------------------------

/// `link` with its query replaced by these pairs.
fn with_query(link: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse(link).expect("a URL");
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

/// The `expires` and `signature` of a signed link.
fn link_parts(link: &str) -> (String, String) {
    let url = Url::parse(link).expect("a URL");
    let pairs: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    (pairs["expires"].clone(), pairs["signature"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_links_work_without_a_token_and_only_unaltered_and_in_time() {
    let server = TestServer::new().await;
    let file = server.upload_ok(ALICE, "sales.csv", CSV, None).await;
    let id = text_of(&file["id"]).to_owned();
    let link = text_of(&file["download_url"]).to_owned();
    let other = server.upload_ok(ALICE, "other.csv", b"a,b\n", None).await;
    let other_link = text_of(&other["download_url"]).to_owned();
    let (expires, signature) = link_parts(&link);
    let expires_at: u64 = expires.parse().expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(expires_at > now, "the link is valid for a while");

    let response = server.client.get(&link).send().await.expect("get");
    assert_eq!(bytes_of(response, 200).await, CSV);

    let flipped = {
        let mut chars: Vec<char> = signature.chars().collect();
        let last = chars.last_mut().expect("a signature");
        *last = if *last == '0' { '1' } else { '0' };
        chars.into_iter().collect::<String>()
    };
    let later = (expires_at + 1).to_string();
    let (other_expires, other_signature) = link_parts(&other_link);
    let expired = now - 10;
    let expired_signature = server.state.signer.sign(
        LinkSubject {
            file_id: &id,
            tenant: "tenant-a",
            user: "alice",
        },
        expired,
    );
    let expired_text = expired.to_string();
    let bobs_signature = server.state.signer.sign(
        LinkSubject {
            file_id: &id,
            tenant: "tenant-a",
            user: "bob",
        },
        expires_at,
    );
    let other_tenants = server.state.signer.sign(
        LinkSubject {
            file_id: &id,
            tenant: "tenant-b",
            user: "alice",
        },
        expires_at,
    );
    let refused: Vec<(&str, String)> = vec![
        (
            "altered signature",
            with_query(&link, &[("expires", &expires), ("signature", &flipped)]),
        ),
        (
            "altered expiry",
            with_query(&link, &[("expires", &later), ("signature", &signature)]),
        ),
        (
            "another file's signature",
            with_query(
                &link,
                &[("expires", &other_expires), ("signature", &other_signature)],
            ),
        ),
        (
            "expired",
            with_query(
                &link,
                &[
                    ("expires", &expired_text),
                    ("signature", &expired_signature),
                ],
            ),
        ),
        (
            "signed for another user",
            with_query(
                &link,
                &[("expires", &expires), ("signature", &bobs_signature)],
            ),
        ),
        (
            "signed for another tenant",
            with_query(
                &link,
                &[("expires", &expires), ("signature", &other_tenants)],
            ),
        ),
        ("no signature", with_query(&link, &[("expires", &expires)])),
        ("no expiry", with_query(&link, &[("signature", &signature)])),
        // An expiry altered into something that is not a Unix time is still an altered link.
        (
            "expiry not a number",
            with_query(&link, &[("expires", "soon"), ("signature", &signature)]),
        ),
        (
            "expiry out of range",
            with_query(
                &link,
                &[
                    ("expires", "99999999999999999999999"),
                    ("signature", &signature),
                ],
            ),
        ),
        (
            "signature not hex",
            with_query(&link, &[("expires", &expires), ("signature", "zz")]),
        ),
        (
            "a file that does not exist",
            link.replace(&id, "file_0000000000000000000000000000dead"),
        ),
    ];
    for (case, url) in &refused {
        let response = server.client.get(url).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 403, "{case}: {url}");
        assert_error(response, 403, "forbidden").await;
    }

    // A link is not a way around the token either: a token of another user does not turn a
    // bad link into a good one.
    let response = server
        .client
        .get(with_query(
            &link,
            &[("expires", &expires), ("signature", &flipped)],
        ))
        .bearer_auth(TENANT_A_TOKEN)
        .header("x-user-id", "alice")
        .send()
        .await
        .expect("get");
    assert_error(response, 403, "forbidden").await;

    // Once the file is deleted, its link is refused like a forged one.
    let response = server
        .request(ALICE, Method::DELETE, &format!("/v1/files/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status().as_u16(), 204);
    let response = server.client.get(&link).send().await.expect("get");
    assert_error(response, 403, "forbidden").await;
    let response = server.client.get(&other_link).send().await.expect("get");
    assert_eq!(bytes_of(response, 200).await, b"a,b\n");
}

// ---------------------------------------------------------------------------------------------
// 8. Message binding.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stays_bound_to_its_user_and_chat() {
    let server = TestServer::new().await;
    server
        .run_ok(
            ALICE,
            ("chat-1", "msg-1"),
            "open('/mnt/data/a.csv', 'w').write('1\\n')",
            &[],
        )
        .await;
    let blobs = server.data_dir().join("blobs");
    let blobs_before = files_below(&blobs).len();

    let server = &server;
    let run = |caller: Caller, chat: &str| {
        let body = json!({ "chat_id": chat, "message_id": "msg-1", "code": "print(1)" });
        async move { server.run(caller, &body).await }
    };
    assert_error(run(BOB, "chat-1").await, 404, "not_found").await;
    assert_error(run(ALICE, "chat-2").await, 404, "not_found").await;
    assert_error(run(BOB, "chat-2").await, 404, "not_found").await;
    let response = server
        .upload(BOB, "bob.csv", CSV, Some(("chat-1", "msg-1")))
        .await;
    assert_error(response, 404, "not_found").await;
    let response = server
        .upload(ALICE, "alice.csv", CSV, Some(("chat-2", "msg-1")))
        .await;
    assert_error(response, 404, "not_found").await;
    // A message named without its chat must be the uploader's own.
    let message_only = |caller: Caller| {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(CSV.to_vec()).file_name("only.csv"),
            )
            .text("message_id", "msg-1");
        server
            .request(caller, Method::POST, "/v1/files")
            .multipart(form)
            .send()
    };
    let response = message_only(BOB).await.expect("upload");
    assert_error(response, 404, "not_found").await;
    assert_eq!(
        files_below(&blobs).len(),
        blobs_before,
        "refused uploads leave no bytes behind"
    );
    let response = message_only(ALICE).await.expect("upload");
    let joined = json_of(response, 201).await;
    assert_eq!(joined["message_id"], "msg-1");
    assert_eq!(
        joined["chat_id"], "chat-1",
        "the chat comes from the message"
    );
    let response = server
        .get(BOB, "/v1/messages/msg-1/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;
    let response = server
        .get(BOB, "/v1/chats/chat-1/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;

    // The binding is unchanged, and Alice's chat-2 was not created by the refused calls.
    let message = server
        .state
        .supervisor
        .catalog()
        .messages()
        .get(&tenant_id("tenant-a"), &msg_id("msg-1"))
        .await
        .expect("catalog")
        .expect("bound");
    assert_eq!(
        (message.user_id.as_str(), message.chat_id.as_str()),
        ("alice", "chat-1")
    );
    let response = server
        .get(ALICE, "/v1/chats/chat-2/files")
        .send()
        .await
        .expect("list");
    assert_error(response, 404, "not_found").await;
    let again = server
        .run_ok(
            ALICE,
            ("chat-1", "msg-1"),
            "print(open('/mnt/data/a.csv').read())",
            &[],
        )
        .await;
    assert_eq!(again["stdout"], "1\n\n");
}
