//! The architecture's invariants, made executable (ARCHITECTURE.md names them): which module
//! may use which outside world, no `unwrap()` outside tests, a `//!` doc on every module, and
//! no source file past its size. A test here failing means the code drifted from the shape
//! the documents describe: fix the code (or, for a deliberate change, the document and this
//! file together).

use std::path::{Path, PathBuf};

/// Lines of code a source file may have, tests aside.
const MAX_LINES: usize = 600;

/// Files over [`MAX_LINES`] today, each with the size it may not grow past. Splitting one
/// below the limit means removing it here (the test says so): the list only shrinks.
const OVERSIZED: [(&str, usize); 0] = [];

/// Every `.rs` file under `src/`, relative to the crate root, with its text.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(root.join("src"))
        .into_iter()
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "rs") {
            let text = std::fs::read_to_string(path).expect("read a source file");
            let relative: PathBuf = path.strip_prefix(root).expect("under the root").into();
            found.push((relative.to_string_lossy().into_owned(), text));
        }
    }
    found.sort();
    assert!(found.len() > 20, "the sources were not found");
    found
}

/// The part of a file before its unit tests: up to a `#[cfg(test)]` that (after any other
/// attributes) opens a `mod`.
fn code_of(text: &str) -> &str {
    let lines: Vec<&str> = text.lines().collect();
    let mut offset = 0;
    for (index, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && lines[index + 1..]
                .iter()
                .find(|next| !next.trim_start().starts_with("#["))
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            return &text[..offset];
        }
        offset += line.len() + 1;
    }
    text
}

/// Files outside `allowed` (path prefixes) whose code names `crate_name`.
fn users_of(crate_name: &str, allowed: &[&str]) -> Vec<String> {
    let pattern = format!("{crate_name}::");
    sources()
        .into_iter()
        .filter(|(path, _)| !allowed.iter().any(|prefix| path.starts_with(prefix)))
        .filter(|(_, text)| {
            code_of(text).lines().any(|line| {
                let line = line.trim_start();
                !line.starts_with("//") && line.contains(&pattern)
            })
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn only_the_runtime_talks_to_engines_and_gateways() {
    for engine in ["bollard", "tokio_tungstenite", "reqwest"] {
        assert_eq!(
            users_of(engine, &["src/runtime/"]),
            Vec::<String>::new(),
            "{engine} outside src/runtime/"
        );
    }
}

#[test]
fn only_the_catalog_knows_sql() {
    assert_eq!(users_of("sqlx", &["src/catalog/"]), Vec::<String>::new());
}

#[test]
fn only_the_api_knows_http_routing() {
    for http in ["axum", "hyper", "hyper_util", "tower_http"] {
        assert_eq!(
            users_of(http, &["src/api/"]),
            Vec::<String>::new(),
            "{http} outside src/api/"
        );
    }
}

#[test]
fn no_unwrap_outside_tests() {
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| code_of(text).contains(".unwrap()"))
        .map(|(path, _)| path)
        .collect();
    assert_eq!(offenders, Vec::<String>::new());
}

#[test]
fn every_module_says_what_it_is_for() {
    let undocumented: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert_eq!(undocumented, Vec::<String>::new());
}

#[test]
fn no_source_file_grows_past_its_size() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let lines = code_of(&text).lines().count();
        let ceiling = OVERSIZED
            .iter()
            .find(|(oversized, _)| *oversized == path)
            .map(|(_, ceiling)| *ceiling);
        match ceiling {
            Some(ceiling) if lines > ceiling => {
                problems.push(format!(
                    "{path}: {lines} lines, past its ceiling of {ceiling}"
                ));
            }
            Some(_) if lines <= MAX_LINES => problems.push(format!(
                "{path}: {lines} lines, within {MAX_LINES} now: take it off OVERSIZED"
            )),
            None if lines > MAX_LINES => {
                problems.push(format!("{path}: {lines} lines, over {MAX_LINES}: split it"));
            }
            _ => {}
        }
    }
    assert_eq!(problems, Vec::<String>::new());
}
