//! The servers of a distributed deployment the tests use (`scripts/dev-services`): the
//! PostgreSQL server and throwaway databases on it (each test that needs one gets a fresh
//! database, dropped at its end, also when it panicked), and the S3 server.

use std::future::Future;
use std::path::Path;
use std::process::Command;

use sqlx::{Connection, PgConnection};

/// What `scripts/dev-services env` prints, after `scripts/dev-services up` started the
/// servers (once per test binary).
fn dev_services_env() -> String {
    static ENV: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
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
        String::from_utf8_lossy(&env.stdout).into_owned()
    })
    .clone()
}

/// The value of `key` in the environment, else in what `scripts/dev-services env` prints.
fn setting(key: &str) -> String {
    if let Ok(value) = std::env::var(key) {
        return value;
    }
    dev_services_env()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("scripts/dev-services env names {key}"))
        .to_owned()
}

/// The URL of the PostgreSQL server the tests use: `CODEBOX_TEST_POSTGRES_URL` when set, else
/// the one `scripts/dev-services up` starts on loopback. A server that cannot be had fails the
/// test: the suite never skips a back end silently.
pub fn test_postgres() -> String {
    setting("CODEBOX_TEST_POSTGRES_URL")
}

/// The S3 server the tests use, `(endpoint, bucket)`: `CODEBOX_TEST_S3_ENDPOINT` and
/// `CODEBOX_TEST_S3_BUCKET` when set, else the moto `scripts/dev-services up` starts, whose
/// credentials (it accepts any) are then set for the stores the test opens.
pub fn test_s3() -> (String, String) {
    static S3: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    S3.get_or_init(|| {
        for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            if std::env::var_os(name).is_none() {
                let value = setting(name);
                // SAFETY: set once, before this test binary opens any store, to the same
                // value whichever test gets here first; nothing changes it afterwards.
                unsafe { std::env::set_var(name, value) };
            }
        }
        (
            setting("CODEBOX_TEST_S3_ENDPOINT"),
            setting("CODEBOX_TEST_S3_BUCKET"),
        )
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
