//! The architecture's invariants, made executable (ARCHITECTURE.md names them): which module
//! may use which outside world, which module may use which (every arrow points down), no
//! `unwrap()` outside tests, a `//!` doc on every module, and no source file too long to read.
//! A test here failing means the code drifted from the shape the documents describe: fix the
//! code (or, for a deliberate change, the document and this file together).

use std::path::{Path, PathBuf};

/// Lines of code a source file may have, tests aside.
const MAX_LINES: usize = 600;

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
    assert_eq!(
        users_of("bollard", &["src/runtime/"]),
        Vec::<String>::new(),
        "bollard outside src/runtime/"
    );
    // HTTP and WebSocket clients: the runtime's, to a gateway, and the API's forwarding, to
    // the other codebox instances that share the catalog (and to nothing else).
    let forwarding = [
        "src/runtime/",
        "src/api/forward.rs",
        "src/api/jupyter/remote.rs",
    ];
    for client in ["tokio_tungstenite", "reqwest"] {
        assert_eq!(
            users_of(client, &forwarding),
            Vec::<String>::new(),
            "{client} outside src/runtime/ and the API's forwarding"
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
fn no_source_file_is_too_long_to_read() {
    let problems: Vec<String> = sources()
        .into_iter()
        .map(|(path, text)| (path, code_of(&text).lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(path, lines)| format!("{path}: {lines} lines, over {MAX_LINES}: split it"))
        .collect();
    assert_eq!(problems, Vec::<String>::new());
}

/// The library's top-level modules, from the top layer down. A module may use modules of the
/// layers below its own and none of its own layer or above, so every arrow points down and
/// there is no circle: `api` asks the supervisor; the supervisor drives the parts; the parts
/// stand on the leaves. `main.rs` and `cli.rs` are the binary, outside the library.
const LAYERS: [&[&str]; 5] = [
    &["server"],
    &["api"],
    &["supervisor"],
    &[
        "blobs",
        "catalog",
        "extract",
        "runtime",
        "snapshot",
        "translate",
        "workspace",
    ],
    &["config", "error", "ids", "safe_fs"],
];

/// The top-level module a source file belongs to (`src/api/files.rs` is `api`).
fn top_module(path: &str) -> &str {
    let inside = path.trim_start_matches("src/");
    let first = inside.split('/').next().unwrap_or(inside);
    first.trim_end_matches(".rs")
}

/// The top-level modules a piece of code names through `crate::`, comments aside: both
/// `crate::catalog::Owner` and the groups of `use crate::{catalog, ids::mint}`.
fn crate_modules_named(code: &str) -> Vec<String> {
    let identifier = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = Vec::new();
    for line in code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
    {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            if !rest.starts_with('{') {
                named.push(identifier(rest));
            }
        }
    }
    // Groups may span lines: take each `crate::{...}` whole and name its top-level items.
    for (at, _) in code.match_indices("crate::{") {
        let group = &code[at + "crate::{".len()..];
        let mut depth = 0;
        let mut expecting_item = true;
        for (offset, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => expecting_item = true,
                c if expecting_item && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                    named.push(identifier(&group[offset..]));
                    expecting_item = false;
                }
                _ => {}
            }
        }
    }
    named.retain(|module| {
        module
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
    });
    named
}

#[test]
fn every_arrow_between_modules_points_down() {
    let layer_of = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let from = top_module(&path);
        if matches!(from, "lib" | "main" | "cli") {
            continue;
        }
        let Some(from_layer) = layer_of(from) else {
            problems.push(format!(
                "{path}: module {from} is in no layer: add it to LAYERS"
            ));
            continue;
        };
        for to in crate_modules_named(code_of(&text)) {
            if to == from {
                continue;
            }
            match layer_of(&to) {
                Some(to_layer) if to_layer > from_layer => {}
                Some(_) => {
                    problems.push(format!("{path}: {from} uses {to}, which is not below it"))
                }
                None => problems.push(format!("{path}: uses crate::{to}, which is in no layer")),
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn the_layer_check_sees_uses_in_every_form() {
    let code = "use crate::catalog::Owner;\nuse crate::{\n    blobs::Blobs,\n    ids::{self, mint},\n};\n// crate::api in a comment\nlet x = crate::runtime::SANDBOX_DATA;\n";
    assert_eq!(
        crate_modules_named(code),
        ["catalog", "runtime", "blobs", "ids"]
    );
}
