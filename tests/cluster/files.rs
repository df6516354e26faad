//! The user's files across nodes: a file deleted through the node that does not hold its
//! message is gone from the holder's workspace before any code runs again, even when its name
//! is given to another file since; a chat deleted through that node takes the holder's
//! workspace with it; a rebuilt workspace brings registered files back under their folders.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_through_the_other_node_is_gone_from_the_holders_workspace() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let message = "m-deleted";
        let (_, upload) = cluster.a.upload("in.csv", CSV, Some(message)).await;
        let read = "import os\n\
                    p = '/mnt/data/in.csv'\n\
                    print(open(p).read() if os.path.exists(p) else 'gone')";
        let (node, first) = cluster.a.run(message, read, &[]).await;
        assert_eq!(node, cluster.a.instance);
        assert_eq!(
            first["stdout"],
            String::from_utf8_lossy(CSV).into_owned() + "\n"
        );

        // Deleted through B, which does not hold the message: A's copy goes at the next run.
        delete_file(&cluster.b, text(&upload["id"])).await;
        let (node, after) = cluster.b.run(message, read, &[]).await;
        assert_eq!(node, cluster.a.instance, "the run is the holder's");
        assert_eq!(after["stdout"], "gone\n", "{after:#}");

        // The name is free again: another file takes it, and the code reads that one.
        let other = b"region,units\neast,9\n";
        let (_, second) = cluster.b.upload("in.csv", other, Some(message)).await;
        assert_eq!(second["path"], "/mnt/data/in.csv", "{second:#}");
        let (node, reread) = cluster.b.run(message, read, &[]).await;
        assert_eq!(node, cluster.a.instance);
        assert_eq!(
            reread["stdout"],
            String::from_utf8_lossy(other).into_owned() + "\n"
        );
        // And deleted again, through A this time, it is gone at once.
        delete_file(&cluster.a, text(&second["id"])).await;
        let (_, last) = cluster.b.run(message, read, &[]).await;
        assert_eq!(last["stdout"], "gone\n", "{last:#}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_deleted_through_the_other_node_takes_the_holders_workspace() {
    with_database(|catalog| async move {
        let cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        cluster
            .a
            .run(
                "m-chat-1",
                "open('/mnt/data/t.csv', 'w').write('a\\n')",
                &[],
            )
            .await;
        cluster.a.run("m-chat-2", "x = 1", &[]).await;
        assert_eq!(process::containers_of(&cluster.a.instance).len(), 2);
        assert_eq!(workspace_folders(&cluster.a).len(), 2);

        let response = cluster
            .b
            .send(
                "a chat deletion",
                cluster
                    .b
                    .request(Method::DELETE, &format!("/v1/chats/{CHAT}")),
            )
            .await;
        let (node, deleted) = json_answer(response, 200).await;
        assert_eq!(node, cluster.b.instance, "a chat's deletion is any node's");
        assert_eq!(deleted["workspaces_removed"], 2, "{deleted:#}");
        assert_eq!(deleted["files_deleted"], 1, "{deleted:#}");
        assert!(
            process::containers_of(&cluster.a.instance).is_empty(),
            "the holder's sandboxes are gone"
        );
        assert!(
            workspace_folders(&cluster.a).is_empty(),
            "the holder's folders are gone"
        );
        // The message ids are free again, as new messages.
        let (_, fresh) = cluster
            .b
            .run("m-chat-2", "print('x' in globals())", &[])
            .await;
        assert_eq!(fresh["stdout"], "False\n");
        assert_eq!(fresh["workspace_restored"], false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_workspace_has_its_files_under_their_folders_and_its_newest_versions() {
    with_database(|catalog| async move {
        let mut cluster = Cluster::start(&catalog, NODE_TIMEOUT).await;
        let message = "m-folders";
        cluster.a.upload("in.csv", CSV, Some(message)).await;
        // The code writes over its attachment too: its own version is what comes back there.
        cluster
            .a
            .run(
                message,
                "import os\n\
                 os.makedirs('/mnt/data/out/2026', exist_ok=True)\n\
                 open('/mnt/data/out/2026/q1.csv', 'w').write('q,1\\n')\n\
                 open('/mnt/data/top.csv', 'w').write('v,1\\n')\n\
                 os.remove('/mnt/data/in.csv')\n\
                 open('/mnt/data/in.csv', 'w').write('mine\\n')",
                &[],
            )
            .await;
        // A later run replaces one file: the newest version is the one that comes back.
        cluster
            .a
            .run(
                message,
                "open('/mnt/data/top.csv', 'w').write('v,2\\n')",
                &[],
            )
            .await;
        cluster.a.stop().await;

        let (node, rebuilt) = cluster
            .b
            .run(
                message,
                "import os\n\
                 print(open('/mnt/data/out/2026/q1.csv').read(), end='')\n\
                 print(open('/mnt/data/top.csv').read(), end='')\n\
                 print(open('/mnt/data/in.csv').read(), end='')\n\
                 print(open('/mnt/data/in (1).csv').read() == open('/mnt/inputs/in (1).csv').read())\n\
                 st = os.stat('/mnt/data/top.csv')\n\
                 open('/mnt/data/top.csv', 'a').write('v,3\\n')\n\
                 print(os.getuid() == st.st_uid)",
                &[],
            )
            .await;
        assert_eq!(node, cluster.b.instance);
        assert_eq!(rebuilt["workspace_restored"], true, "{rebuilt:#}");
        assert_eq!(
            rebuilt["stdout"], "q,1\nv,2\nmine\nTrue\nTrue\n",
            "{rebuilt:#}"
        );
        // The code may change what came back, as its own: the change is registered.
        assert_eq!(names_of(&rebuilt["files"]), ["top.csv"], "{rebuilt:#}");
    })
    .await;
}

/// Deletes the file `id` through `node`, confirmed (it is attached to a message of a chat).
async fn delete_file(node: &Node, id: &str) {
    let request = node.request(Method::DELETE, &format!("/v1/files/{id}?confirm=true"));
    let response = node.send("a deletion", request).await;
    assert_eq!(response.status().as_u16(), 204);
}

/// The workspace folders on `node`'s disk.
fn workspace_folders(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.data_dir.join("workspaces"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}
