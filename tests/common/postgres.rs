//! The PostgreSQL server the tests use, and throwaway databases on it: each test that needs
//! one gets a fresh database, dropped at its end (also when it panicked).

use std::future::Future;
use std::path::Path;
use std::process::Command;

use sqlx::{Connection, PgConnection};

/// The URL of the PostgreSQL server the tests use: `CODEBOX_TEST_POSTGRES_URL` when set, else
/// the one `scripts/dev-services up` starts on loopback. A server that cannot be had fails the
/// test: the suite never skips a back end silently.
pub fn test_postgres() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("CODEBOX_TEST_POSTGRES_URL") {
            return url;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-services");
        let up = Command::new(&script)
            .arg("up")
            .status()
            .expect("run scripts/dev-services up");
        assert!(up.success(), "scripts/dev-services up failed");
        let env = Command::new(&script)
            .arg("env")
            .output()
            .expect("run scripts/dev-services env");
        assert!(env.status.success(), "scripts/dev-services env failed");
        String::from_utf8_lossy(&env.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("CODEBOX_TEST_POSTGRES_URL="))
            .expect("the PostgreSQL URL in scripts/dev-services env")
            .to_owned()
    })
    .clone()
}

/// Runs `body` with the URL of a fresh database on the test server, then drops the database,
/// whether `body` returned or panicked (the panic is resumed after the drop).
pub async fn with_database<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let base = test_postgres();
    let name = format!("codebox_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&base)
        .await
        .expect("connect to the test PostgreSQL server");
    // The C collation, as the README asks of a catalog database: text compares byte by byte,
    // as on SQLite, whatever the server's default.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    )))
    .execute(&mut admin)
    .await
    .expect("create a test database");
    let url = database_url(&base, &name);
    // A spawned task turns a panic into an error, so that the database is dropped either way.
    let outcome = tokio::spawn(body(url)).await;
    // Connections a panicking body left open would block the drop; `WITH (FORCE)` ends them.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the test database");
    admin.close().await.ok();
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// `base` (`postgres://user@host:port/db?options`) with its database replaced by `name`.
fn database_url(base: &str, name: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url, format!("?{query}")),
        None => (base, String::new()),
    };
    let authority_end = without_query
        .find("://")
        .map(|scheme| scheme + 3)
        .and_then(|start| without_query[start..].find('/').map(|slash| start + slash))
        .unwrap_or(without_query.len());
    format!("{}/{name}{query}", &without_query[..authority_end])
}
