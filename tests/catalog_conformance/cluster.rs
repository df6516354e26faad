//! The checks of what several instances on one catalog rely on: the `nodes` table (each
//! instance's URL and heartbeat) and the holder of a message (`messages.node`), moved by one
//! conditional update that only one of several racing instances wins.

use super::*;
use codebox::catalog::NodeRecord;

fn node(id: &str, url: &str, heartbeat_at: &str) -> NodeRecord {
    NodeRecord {
        id: id.to_owned(),
        url: url.to_owned(),
        started_at: at(2026, 0),
        heartbeat_at: heartbeat_at.to_owned(),
    }
}

pub async fn nodes(catalog: &Catalog) {
    let nodes = catalog.nodes();
    nodes
        .beat(&node("inst_a", "http://10.0.0.1:8080", &at(2026, 10)))
        .await
        .expect("first beat");
    nodes
        .beat(&node("inst_b", "http://10.0.0.2:8080", &at(2026, 10)))
        .await
        .expect("another node");
    // A later beat moves the heartbeat and the URL, never the start.
    let mut again = node("inst_a", "http://10.0.0.9:8080", &at(2026, 20));
    again.started_at = at(2026, 15);
    nodes.beat(&again).await.expect("beat again");
    let a = nodes
        .get("inst_a")
        .await
        .expect("get")
        .expect("a has a row");
    assert_eq!(a.url, "http://10.0.0.9:8080");
    assert_eq!(a.heartbeat_at, at(2026, 20));
    assert_eq!(a.started_at, at(2026, 0), "the start is the first beat's");
    let all: Vec<String> = nodes
        .all()
        .await
        .expect("all")
        .into_iter()
        .map(|node| node.id)
        .collect();
    assert_eq!(all, ["inst_a", "inst_b"]);
    nodes.remove("inst_a").await.expect("remove");
    nodes
        .remove("inst_a")
        .await
        .expect("removing again is harmless");
    assert_eq!(nodes.get("inst_a").await.expect("get"), None);
    nodes.remove("inst_b").await.expect("remove b");
}

pub async fn message_takeover(catalog: &Catalog) {
    let messages = catalog.messages();
    let owner = Owner::new("node-tenant", "alice");
    let chat_id = chat("chat-1");
    let m = message("held");
    let workspace = WorkspaceId::new();
    let now = at(2026, 0);
    let claimed = messages
        .claim(&claim(&owner, &chat_id, &m, &workspace, &now))
        .await
        .expect("claim");
    assert_eq!(
        claimed.node.as_deref(),
        Some("node-a"),
        "the claimer holds it"
    );
    // Only from the holder it has: a stale belief moves nothing.
    assert!(
        !messages
            .take_over(&owner.tenant, &m, (Some("node-x"), "node-b"))
            .await
            .expect("take over from a wrong holder")
    );
    assert!(
        !messages
            .take_over(&owner.tenant, &m, (None, "node-b"))
            .await
            .expect("take over as if unheld")
    );
    assert!(
        messages
            .take_over(&owner.tenant, &m, (Some("node-a"), "node-b"))
            .await
            .expect("take over")
    );
    let moved = messages
        .get(&owner.tenant, &m)
        .await
        .expect("get")
        .expect("the message");
    assert_eq!(moved.node.as_deref(), Some("node-b"));
    assert_eq!(moved.workspace_id, workspace, "the workspace id stays");
    // A claim of the held message by another instance does not move it.
    let reclaimed = messages
        .claim(&Claim {
            node: "node-c",
            ..claim(&owner, &chat_id, &m, &WorkspaceId::new(), &now)
        })
        .await
        .expect("claim again");
    assert_eq!(reclaimed.node.as_deref(), Some("node-b"));
    // Of several instances taking one message over at once, exactly one wins.
    let racers = (0..8).map(|index| {
        let catalog = catalog.clone();
        let (tenant, m) = (owner.tenant.clone(), m.clone());
        tokio::spawn(async move {
            catalog
                .messages()
                .take_over(&tenant, &m, (Some("node-b"), &format!("racer-{index}")))
                .await
                .expect("take over")
        })
    });
    let won = futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|won| *won.as_ref().expect("join"))
        .count();
    assert_eq!(won, 1);
}
