//! Translation between the paths a workspace has on the host and the paths it has inside the
//! sandbox, plus rendering of sandbox file references as download links.
//!
//! Code written by a chat assistant refers to the workspace as `/mnt/data` (read-write) and to
//! attachments as `/mnt/inputs` (read-only), because that is where the container mounts them.
//! On the host the same folders live under `<data_dir>/workspaces/<workspace_id>/`. Whatever
//! crosses the boundary has to be rewritten: error output must not leak host paths back to the
//! model (it would then try to use them), code sent to a runtime that does not mount
//! `/mnt/data` must point at the host folders, and the answer shown to the user should link
//! `sandbox:/mnt/data/report.xlsx` (or a stored file's `workspace://<file id>`) to a real
//! download URL.
//!
//! Everything here is a pure function over `&str`. Matching is literal and component-aware:
//! a prefix only matches as a whole path component, so `/mnt/database` or a sibling folder such
//! as `.../data-old` is never touched, and a prefix is never matched in the middle of a longer
//! path such as `/x/mnt/data`. Every scan moves forward through the text at most a constant
//! number of times, so large outputs are processed in linear time and no input can panic.
//!
//! Limitations: paths assembled at run time (`os.path.join("/mnt", "data")`) cannot be seen by
//! a textual rewrite, and the inbound rewrite does not try to tell string literals from
//! comments.

use percent_encoding::percent_decode_str;

/// Where a workspace's two folders are on the host and inside the sandbox.
///
/// Trailing slashes are ignored. An empty (or root-only) path disables the mapping it takes part
/// in, because matching it would rewrite every slash in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    /// The workspace folder on the host, for example `/srv/codebox/workspaces/abc/data`.
    pub host_data: String,
    /// The attachments folder on the host, for example `/srv/codebox/workspaces/abc/inputs`.
    pub host_inputs: String,
    /// The workspace folder inside the sandbox, `/mnt/data` by default.
    pub sandbox_data: String,
    /// The attachments folder inside the sandbox, `/mnt/inputs` by default.
    pub sandbox_inputs: String,
}

pub use crate::config::{SANDBOX_DATA, SANDBOX_INPUTS};

impl PathMap {
    /// Builds a map for the given host folders, with the sandbox sides at `/mnt/data` and
    /// `/mnt/inputs`. Trailing slashes on the host paths are removed.
    pub fn new(host_data: impl Into<String>, host_inputs: impl Into<String>) -> Self {
        Self {
            host_data: normalize(&host_data.into()).to_owned(),
            host_inputs: normalize(&host_inputs.into()).to_owned(),
            sandbox_data: SANDBOX_DATA.to_owned(),
            sandbox_inputs: SANDBOX_INPUTS.to_owned(),
        }
    }

    /// Returns the (from, to) prefix pairs for one direction, longest `from` first so that the
    /// longest match wins when one prefix contains the other. Normalization is repeated here
    /// because the fields are public and may have been set directly.
    fn pairs(&self, outbound: bool) -> Vec<(&str, &str)> {
        let data = (normalize(&self.host_data), normalize(&self.sandbox_data));
        let inputs = (
            normalize(&self.host_inputs),
            normalize(&self.sandbox_inputs),
        );
        let mut pairs: Vec<(&str, &str)> = [data, inputs]
            .into_iter()
            .map(|(host, sandbox)| {
                if outbound {
                    (host, sandbox)
                } else {
                    (sandbox, host)
                }
            })
            .filter(|(from, _)| !from.is_empty())
            .collect();
        // The sort is stable, so with equal lengths the data folder keeps priority.
        pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        pairs
    }
}

/// Outbound: host workspace paths in text the sandbox produced (stdout, stderr, tracebacks)
/// become sandbox paths, so the model only ever sees `/mnt/data` and `/mnt/inputs`.
pub fn to_sandbox_paths(text: &str, map: &PathMap) -> String {
    replace_prefixes(text, &map.pairs(true))
}

/// Inbound: sandbox paths in code become host paths, for runtimes that do not mount
/// `/mnt/data` (e.g. a remote kernel on a shared filesystem). For text that contains no host
/// paths, [`to_sandbox_paths`] undoes this exactly.
pub fn to_host_paths(code: &str, map: &PathMap) -> String {
    replace_prefixes(code, &map.pairs(false))
}

/// Link rendering: every `sandbox:/mnt/data/<rel>` and bare `/mnt/data/<rel>` in `text` whose
/// `resolve(rel)` returns `Some(url)` is replaced by that url; others are left exactly as they
/// are. `rel` is given percent-decoded (markdown links often write spaces as `%20`).
///
/// `rel` extends over path characters and stops at whitespace, quotes, backticks, `]`, `<`,
/// `>`, `*`, `|` and an unbalanced `)`; trailing `,;.:!?` are treated as sentence punctuation.
/// Inside `<...>` the reference runs up to the closing `>`, so it may contain spaces.
/// `resolve` is never called with an empty `rel`, a leading `/`, an empty, `.` or `..`
/// component, a backslash or a control character; such references stay untouched.
pub fn render_links(text: &str, mut resolve: impl FnMut(&str) -> Option<String>) -> String {
    const BARE: &str = "/mnt/data/";
    const SCHEME: &str = "sandbox:";
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(BARE) {
        let at = search + found;
        let rel_start = at + BARE.len();
        // A match rejected before its rel is scanned resumes the search right after the
        // prefix, so rejected matches cost constant work and later ones stay visible.
        search = rel_start;
        let start = if text[..at].ends_with(SCHEME) {
            at - SCHEME.len()
        } else {
            at
        };
        if !boundary_before(text, start) {
            continue;
        }
        let rel_end = rel_extent(text, start, rel_start);
        // Whatever happens to this reference, its rel is not searched again: a link target
        // cannot contain a second link.
        search = rel_end;
        // A `%` not followed by two hex digits stays as it is; a rel whose decoded bytes are
        // not UTF-8 cannot name a file.
        let Some(rel) = percent_decode_str(&text[rel_start..rel_end])
            .decode_utf8()
            .ok()
            .filter(|r| is_safe_rel(r))
        else {
            continue;
        };
        if let Some(url) = resolve(&rel) {
            out.push_str(&text[copied..start]);
            out.push_str(&url);
            copied = rel_end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// How a model's text names a stored file by its id: `workspace://<file id>` (a File's `ref`).
const WORKSPACE_SCHEME: &str = "workspace://";

/// The `workspace://<id>` references in `text`, in order: the byte range of each and its id.
/// An id is the run of ASCII letters, digits and `_` after the scheme (what codebox mints); a
/// reference that continues a longer path or name, or names no id, is none.
fn workspace_ref_spans(text: &str) -> impl Iterator<Item = (usize, usize, &str)> + '_ {
    let mut search = 0;
    std::iter::from_fn(move || {
        while let Some(found) = text[search..].find(WORKSPACE_SCHEME) {
            let start = search + found;
            let id_start = start + WORKSPACE_SCHEME.len();
            let id_len = text[id_start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - id_start);
            search = id_start + id_len;
            if id_len > 0 && boundary_before(text, start) {
                return Some((start, search, &text[id_start..search]));
            }
        }
        None
    })
}

/// The file ids that `workspace://<id>` references in `text` name, in order (repeats
/// included), for a caller that looks them up before [`render_workspace_refs`].
pub fn workspace_refs(text: &str) -> impl Iterator<Item = &str> + '_ {
    workspace_ref_spans(text).map(|(_, _, id)| id)
}

/// Replaces every `workspace://<id>` reference in `text` for which `resolve(id)` gives a URL
/// by that URL; the others stay as they are.
pub fn render_workspace_refs(
    text: &str,
    mut resolve: impl FnMut(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, id) in workspace_ref_spans(text) {
        if let Some(url) = resolve(id) {
            out.push_str(&text[copied..start]);
            out.push_str(&url);
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Strips trailing slashes; a path made only of slashes becomes empty and so disables itself.
fn normalize(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// Characters that may continue a path on either side of a prefix. A match next to one of
/// them would be part of a longer path, so it is not a match.
fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// True when a prefix starting at byte `start` is not the tail of a longer path. The one
/// exception to "no slash before" is a `file://` URL, whose path starts after the authority.
fn boundary_before(text: &str, start: usize) -> bool {
    let before = &text[..start];
    match before.chars().next_back() {
        None => true,
        Some(c) if !is_path_char(c) => true,
        Some(_) => before.ends_with("file://"),
    }
}

/// True when a prefix ending at byte `end` ends on a component boundary: the text ends, a `/`
/// follows, or a non-path character follows. Dots followed by a non-path character are
/// sentence punctuation (`saved in /mnt/data.`), not part of a name like `/mnt/data.old`.
fn boundary_after(text: &str, end: usize) -> bool {
    let rest = &text[end..];
    let after_dots = rest.trim_start_matches('.');
    match after_dots.chars().next() {
        None => true,
        Some('/') => after_dots.len() == rest.len(),
        Some(c) => !is_path_char(c),
    }
}

/// Replaces every whole-component occurrence of a `from` prefix by its `to`, in one forward
/// pass. Replaced text is never scanned again, so the output cannot be rewritten twice.
fn replace_prefixes(text: &str, pairs: &[(&str, &str)]) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // A non-empty UTF-8 pattern starts with a leading byte, which never equals a
        // continuation byte, so a byte-level match always starts and ends on char boundaries.
        let hit = pairs.iter().find(|(from, _)| {
            bytes[i..].starts_with(from.as_bytes())
                && boundary_before(text, i)
                && boundary_after(text, i + from.len())
        });
        match hit {
            Some((from, to)) => {
                out.push_str(&text[copied..i]);
                out.push_str(to);
                i += from.len();
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Returns the byte offset where the rel of a reference starting at `start` (the `sandbox:`
/// or the first `/`) ends. `rel_start` is just after `/mnt/data/`.
fn rel_extent(text: &str, start: usize, rel_start: usize) -> usize {
    let rest = &text[rel_start..];
    // In the angle-bracket form the brackets delimit the reference, so spaces are allowed.
    // The search stops at `<` and line breaks so that it never runs over the next reference.
    if text[..start].ends_with('<')
        && let Some(k) = rest.find(['>', '<', '\n', '\r'])
        && rest[k..].starts_with('>')
    {
        return rel_start + k;
    }
    let mut depth = 0usize;
    let mut end = rest.len();
    for (k, c) in rest.char_indices() {
        let stop = match c {
            // Balanced parentheses belong to the name (`report (1).csv`); an unbalanced one
            // closes a markdown link.
            '(' => {
                depth += 1;
                false
            }
            ')' if depth > 0 => {
                depth -= 1;
                false
            }
            // `*` and `|` are markdown emphasis and table syntax; real files rarely use them.
            ')' | ']' | '[' | '<' | '>' | '"' | '\'' | '`' | '*' | '|' => true,
            c => c.is_whitespace() || c.is_control(),
        };
        if stop {
            end = k;
            break;
        }
    }
    let rel = rest[..end].trim_end_matches([',', ';', '.', ':', '!', '?']);
    rel_start + rel.len()
}

/// True when `rel` names something strictly inside the workspace: relative, with no empty,
/// `.` or `..` component, and free of backslashes and control characters that a resolver might
/// reinterpret. Checked after decoding, so `%2E%2E` is caught as well.
fn is_safe_rel(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.chars().any(|c| c == '\\' || c.is_control())
        && rel.split('/').all(|part| !matches!(part, "" | "." | ".."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const HD: &str = "/srv/ws/abc/data";
    const HI: &str = "/srv/ws/abc/inputs";

    fn map() -> PathMap {
        PathMap::new(HD, HI)
    }

    /// A resolver that knows a fixed set of files and records every call it receives.
    fn resolver<'a>(
        known: &'a [&'a str],
        calls: &'a RefCell<Vec<String>>,
    ) -> impl FnMut(&str) -> Option<String> + 'a {
        move |rel: &str| {
            calls.borrow_mut().push(rel.to_owned());
            known
                .contains(&rel)
                .then(|| format!("https://dl/{}", rel.replace(' ', "+")))
        }
    }

    fn render(text: &str, known: &[&str]) -> String {
        let calls = RefCell::new(Vec::new());
        render_links(text, resolver(known, &calls))
    }

    #[test]
    fn new_sets_sandbox_defaults_and_strips_trailing_slashes() {
        let m = PathMap::new("/srv/ws/abc/data/", String::from("/srv/ws/abc/inputs//"));
        assert_eq!(m.host_data, HD);
        assert_eq!(m.host_inputs, HI);
        assert_eq!(m.sandbox_data, "/mnt/data");
        assert_eq!(m.sandbox_inputs, "/mnt/inputs");
        assert_eq!(m, map());
    }

    #[test]
    fn fields_set_directly_are_normalized_on_use() {
        let mut m = map();
        m.host_data = format!("{HD}/");
        m.sandbox_data = "/mnt/data/".into();
        assert_eq!(to_sandbox_paths(&format!("{HD}/x"), &m), "/mnt/data/x");
        assert_eq!(to_host_paths("/mnt/data/x", &m), format!("{HD}/x"));
    }

    #[test]
    fn outbound_rewrites_a_traceback() {
        let text = format!(
            "Traceback (most recent call last):\n  File \"{HD}/script.py\", line 3, in <module>\n\
             FileNotFoundError: [Errno 2] No such file or directory: '{HI}/missing.csv'\n"
        );
        let expected = "Traceback (most recent call last):\n  File \"/mnt/data/script.py\", line 3, \
                        in <module>\nFileNotFoundError: [Errno 2] No such file or directory: \
                        '/mnt/inputs/missing.csv'\n";
        assert_eq!(to_sandbox_paths(&text, &map()), expected);
    }

    #[test]
    fn outbound_matches_whole_components_only() {
        let m = map();
        let cases = [
            (HD.to_owned(), "/mnt/data"),
            (format!("{HD}/"), "/mnt/data/"),
            (format!("{HD}/x.csv"), "/mnt/data/x.csv"),
            (format!("'{HD}'"), "'/mnt/data'"),
            (format!("\"{HD}/a b.csv\""), "\"/mnt/data/a b.csv\""),
            (format!("cd {HD}; ls"), "cd /mnt/data; ls"),
            (format!("({HD}:{HI})"), "(/mnt/data:/mnt/inputs)"),
        ];
        for (input, expected) in cases {
            assert_eq!(to_sandbox_paths(&input, &m), expected, "input {input:?}");
        }
        for untouched in [
            format!("{HD}-old/x"),
            format!("{HD}2"),
            format!("{HD}base"),
            format!("{HD}_x"),
            format!("{HD}.bak"),
            format!("{HD}./x"),
            format!("/x{HD}/y"),
            format!("a{HD}"),
            format!("-{HD}"),
            format!(".{HD}"),
            format!("é{HD}"),
            format!("{HD}é"),
        ] {
            assert_eq!(to_sandbox_paths(&untouched, &m), untouched);
        }
    }

    #[test]
    fn inbound_matches_whole_components_only() {
        let m = map();
        let cases = [
            ("/mnt/data", HD.to_owned()),
            ("/mnt/data/", format!("{HD}/")),
            ("/mnt/data/x.csv", format!("{HD}/x.csv")),
            ("'/mnt/data'", format!("'{HD}'")),
            ("\"/mnt/data/a b.csv\"", format!("\"{HD}/a b.csv\"")),
            ("sandbox:/mnt/data/x", format!("sandbox:{HD}/x")),
            ("open('/mnt/inputs/in.csv')", format!("open('{HI}/in.csv')")),
            ("f\"/mnt/data/{name}\"", format!("f\"{HD}/{{name}}\"")),
        ];
        for (input, expected) in cases {
            assert_eq!(to_host_paths(input, &m), expected, "input {input:?}");
        }
        for untouched in [
            "/mnt/database",
            "/mnt/data2",
            "/mnt/data-old/x",
            "/mnt/inputs_v2",
            "/x/mnt/data/y",
            "x/mnt/data",
            "/mnt/dat",
            "/mnt/Data",
            "/mnt",
        ] {
            assert_eq!(to_host_paths(untouched, &m), untouched);
        }
    }

    #[test]
    fn trailing_dots_are_punctuation_only_before_a_non_path_char() {
        let m = map();
        assert_eq!(
            to_host_paths("saved in /mnt/data.", &m),
            format!("saved in {HD}.")
        );
        assert_eq!(
            to_host_paths("in /mnt/data...\n", &m),
            format!("in {HD}...\n")
        );
        assert_eq!(to_host_paths("/mnt/data.old", &m), "/mnt/data.old");
        assert_eq!(to_host_paths("/mnt/data../x", &m), "/mnt/data../x");
    }

    #[test]
    fn file_urls_are_translated() {
        let m = map();
        assert_eq!(
            to_host_paths("file:///mnt/data/a.png", &m),
            format!("file://{HD}/a.png")
        );
        assert_eq!(
            to_sandbox_paths(&format!("file://{HD}/a.png"), &m),
            "file:///mnt/data/a.png"
        );
    }

    #[test]
    fn longest_match_wins_when_one_host_path_contains_the_other() {
        let m = PathMap::new("/srv/ws/abc", "/srv/ws/abc/inputs");
        assert_eq!(
            to_sandbox_paths("/srv/ws/abc/inputs/a", &m),
            "/mnt/inputs/a"
        );
        assert_eq!(to_sandbox_paths("/srv/ws/abc/b", &m), "/mnt/data/b");
        // When the longer prefix fails its boundary check, the shorter one still applies.
        assert_eq!(
            to_sandbox_paths("/srv/ws/abc/inputs-old", &m),
            "/mnt/data/inputs-old"
        );
        let m = PathMap::new("/srv/ws/abc/data/in", "/srv/ws/abc/data");
        assert_eq!(to_sandbox_paths("/srv/ws/abc/data/in/x", &m), "/mnt/data/x");
        assert_eq!(to_sandbox_paths("/srv/ws/abc/data/x", &m), "/mnt/inputs/x");
    }

    #[test]
    fn empty_or_root_host_paths_disable_their_mapping() {
        let m = PathMap::new("", "/");
        assert_eq!(m.host_inputs, "");
        let text = "/a/b /mnt/data/x /mnt/inputs/y";
        assert_eq!(to_sandbox_paths(text, &m), text);
        // The inbound direction still has non-empty patterns, so it maps to the empty host path.
        assert_eq!(to_host_paths("/mnt/data/x", &m), "/x");
    }

    /// Ordinary code and output, written with sandbox paths.
    const ROUND_TRIP_CASES: &[&str] = &[
        "",
        "print('hello')",
        "/mnt/data",
        "/mnt/data/",
        "/mnt/inputs/a.csv",
        "df = pd.read_csv('/mnt/inputs/sales 2024.csv')\ndf.to_excel('/mnt/data/out.xlsx')",
        "with open(\"/mnt/data/отчёт.xlsx\", \"wb\") as f: pass",
        "path = '/mnt/data/🙂/notes.txt'",
        "os.listdir('/mnt/data'); os.listdir('/mnt/inputs')",
        "/mnt/data/mnt/data/x",
        "/mnt/data/a:/mnt/inputs/b",
        "/mnt/database /mnt/data2 /x/mnt/data/y",
        "saved to /mnt/data. Done.",
        "sandbox:/mnt/data/report.xlsx",
        "file:///mnt/data/a.png",
        "[link](/mnt/data/a%20b.csv)",
        "\t/mnt/inputs\r\n/mnt/data\u{0}",
    ];

    #[test]
    fn inbound_then_outbound_is_the_identity() {
        for m in [map(), PathMap::new("/srv/ws/abc", "/srv/ws/abc/inputs")] {
            for case in ROUND_TRIP_CASES {
                let host = to_host_paths(case, &m);
                assert_eq!(to_sandbox_paths(&host, &m), *case, "via {host:?}");
            }
        }
    }

    #[test]
    fn outbound_output_contains_no_host_path() {
        let m = map();
        for case in ROUND_TRIP_CASES {
            let host_text = to_host_paths(case, &m);
            let out = to_sandbox_paths(&host_text, &m);
            // Idempotence means no host path that would be rewritten is left or created.
            assert_eq!(to_sandbox_paths(&out, &m), out);
            assert!(!out.contains(HD) && !out.contains(HI), "{out:?}");
        }
        // Adjacent and repeated host paths: the one after a replacement stays a tail.
        let out = to_sandbox_paths(&format!("{HD}{HD} {HD}/{HI}"), &m);
        assert_eq!(out, format!("/mnt/data{HD} /mnt/data/{HI}"));
        assert_eq!(to_sandbox_paths(&out, &m), out);
    }

    #[test]
    fn host_data_dir_under_mnt_data_round_trips() {
        // An operator may well keep data_dir on a disk mounted at /mnt/data on the host.
        let m = PathMap::new(
            "/mnt/data/codebox/ws/abc/data",
            "/mnt/data/codebox/ws/abc/inputs",
        );
        let host = "/mnt/data/codebox/ws/abc/data/x.csv /mnt/data/codebox/ws/abc/inputs/y";
        assert_eq!(to_sandbox_paths(host, &m), "/mnt/data/x.csv /mnt/inputs/y");
        for case in ROUND_TRIP_CASES {
            let host = to_host_paths(case, &m);
            assert_eq!(to_sandbox_paths(&host, &m), *case, "via {host:?}");
        }
    }

    #[test]
    fn unicode_paths_are_handled() {
        let m = PathMap::new("/srv/ws/тест/data", "/srv/ws/тест/inputs");
        let text = "Ошибка: /srv/ws/тест/data/отчёт 🙂.xlsx и /srv/ws/тест/inputsё";
        assert_eq!(
            to_sandbox_paths(text, &m),
            "Ошибка: /mnt/data/отчёт 🙂.xlsx и /srv/ws/тест/inputsё"
        );
        assert_eq!(to_host_paths("«/mnt/data/ü»", &m), "«/srv/ws/тест/data/ü»");
    }

    #[test]
    fn links_markdown_bare_and_sandbox_forms() {
        let known = ["report.xlsx", "out.csv", "sub/x.pdf", "отчёт.xlsx"];
        let cases = [
            (
                "[r](sandbox:/mnt/data/report.xlsx)",
                "[r](https://dl/report.xlsx)",
            ),
            ("[r](/mnt/data/report.xlsx)", "[r](https://dl/report.xlsx)"),
            (
                "see sandbox:/mnt/data/sub/x.pdf now",
                "see https://dl/sub/x.pdf now",
            ),
            ("/mnt/data/out.csv", "https://dl/out.csv"),
            ("'/mnt/data/out.csv'", "'https://dl/out.csv'"),
            ("\"/mnt/data/out.csv\"", "\"https://dl/out.csv\""),
            ("`/mnt/data/out.csv`", "`https://dl/out.csv`"),
            ("**/mnt/data/out.csv**", "**https://dl/out.csv**"),
            ("| /mnt/data/out.csv|", "| https://dl/out.csv|"),
            ("[sandbox:/mnt/data/out.csv]", "[https://dl/out.csv]"),
            ("/mnt/data/отчёт.xlsx 🙂", "https://dl/отчёт.xlsx 🙂"),
            (
                "a /mnt/data/out.csv b sandbox:/mnt/data/report.xlsx",
                "a https://dl/out.csv b https://dl/report.xlsx",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(render(input, &known), expected, "input {input:?}");
        }
    }

    #[test]
    fn links_keep_sentence_punctuation_outside() {
        let known = ["out.csv", "a.b"];
        let cases = [
            (
                "Saved to /mnt/data/out.csv.",
                "Saved to https://dl/out.csv.",
            ),
            ("/mnt/data/out.csv, then", "https://dl/out.csv, then"),
            (
                "/mnt/data/out.csv; /mnt/data/out.csv: ok",
                "https://dl/out.csv; https://dl/out.csv: ok",
            ),
            (
                "Done! /mnt/data/out.csv!?\n",
                "Done! https://dl/out.csv!?\n",
            ),
            ("(see /mnt/data/out.csv).", "(see https://dl/out.csv)."),
            ("\"/mnt/data/out.csv.\"", "\"https://dl/out.csv.\""),
            ("/mnt/data/a.b", "https://dl/a.b"),
        ];
        for (input, expected) in cases {
            assert_eq!(render(input, &known), expected, "input {input:?}");
        }
        // Punctuation followed by a path character is part of the name.
        assert_eq!(
            render("/mnt/data/out.csv.bak", &known),
            "/mnt/data/out.csv.bak"
        );
    }

    #[test]
    fn links_percent_decoding_and_parentheses() {
        let known = ["report (1).csv", "a b.csv", "100%.csv", "d/é.txt"];
        let cases = [
            (
                "sandbox:/mnt/data/report%20(1).csv",
                "https://dl/report+(1).csv",
            ),
            (
                "[r](sandbox:/mnt/data/report%20(1).csv)",
                "[r](https://dl/report+(1).csv)",
            ),
            ("[r](/mnt/data/a%20b.csv).", "[r](https://dl/a+b.csv)."),
            ("/mnt/data/100%.csv", "https://dl/100%.csv"),
            ("/mnt/data/d%2F%C3%A9.txt", "https://dl/d/é.txt"),
        ];
        for (input, expected) in cases {
            assert_eq!(render(input, &known), expected, "input {input:?}");
        }
        // Invalid UTF-8 after decoding cannot name a file, so resolve is not even asked.
        let calls = RefCell::new(Vec::new());
        let text = "/mnt/data/%FF.csv";
        assert_eq!(
            render_links(text, resolver(&["\u{FFFD}.csv"], &calls)),
            text
        );
        assert!(calls.borrow().is_empty());
    }

    #[test]
    fn links_angle_bracket_form_allows_spaces() {
        let known = ["a b.csv", "a"];
        let cases = [
            ("<sandbox:/mnt/data/a b.csv>", "<https://dl/a+b.csv>"),
            (
                "[x](<sandbox:/mnt/data/a b.csv>)",
                "[x](<https://dl/a+b.csv>)",
            ),
            ("</mnt/data/a%20b.csv>", "<https://dl/a+b.csv>"),
            // Without a closing bracket on the line the ordinary rules apply.
            ("<sandbox:/mnt/data/a b.csv\n>", "<https://dl/a b.csv\n>"),
        ];
        for (input, expected) in cases {
            assert_eq!(render(input, &known), expected, "input {input:?}");
        }
    }

    #[test]
    fn links_unknown_or_invalid_are_left_untouched() {
        let calls = RefCell::new(Vec::new());
        let known = ["x", "a/b", "..", ".", "/etc/passwd"];
        let untouched = [
            "[r](sandbox:/mnt/data/unknown.xlsx)",
            "sandbox:/mnt/data/",
            "/mnt/data/",
            "/mnt/data",
            "sandbox:/mnt/data",
            "/mnt/database/x",
            "/mnt/data2/x",
            "/x/mnt/data/x",
            "xsandbox:/mnt/data/x",
            "/mnt/inputs/x",
            "/mnt/data/../x",
            "/mnt/data/a/../../x",
            "/mnt/data/./x",
            "/mnt/data/..",
            "/mnt/data/.",
            "/mnt/data//etc/passwd",
            "/mnt/data/%2Fetc/passwd",
            "/mnt/data/%2E%2E/x",
            "/mnt/data/a%2F..%2Fx",
            "/mnt/data/a//b",
            "/mnt/data/a/",
            "/mnt/data/a%00",
            "/mnt/data/..\\x",
            "<sandbox:/mnt/data/>",
        ];
        for text in untouched {
            assert_eq!(render_links(text, resolver(&known, &calls)), text);
        }
        for rel in calls.borrow().iter() {
            assert!(is_safe_rel(rel), "resolve saw {rel:?}");
        }
        assert_eq!(*calls.borrow(), ["unknown.xlsx"]);
    }

    #[test]
    fn links_replacement_is_not_rescanned() {
        let mut resolve = |rel: &str| Some(format!("/mnt/data/{rel}/mnt/data/{rel}"));
        assert_eq!(
            render_links("/mnt/data/a /mnt/data/b", &mut resolve),
            "/mnt/data/a/mnt/data/a /mnt/data/b/mnt/data/b"
        );
    }

    /// Runs every public function on `text` and checks invariants that hold for any input.
    fn check_invariants(text: &str) {
        let m = map();
        let _ = to_host_paths(text, &m);
        let out = to_sandbox_paths(text, &m);
        assert_eq!(to_sandbox_paths(&out, &m), out);
        assert_eq!(render_links(text, |_| None), text);
        // With every reference resolvable, resolve still only ever sees safe rels.
        let _ = render_links(text, |rel| {
            assert!(is_safe_rel(rel), "resolve saw {rel:?}");
            Some(String::from("<U>"))
        });
    }

    #[test]
    fn tricky_strings_do_not_panic() {
        let tricky = [
            "",
            "/",
            "%",
            "%%",
            "%2",
            "%e9",
            "%C3",
            "é",
            "🙂",
            "/mnt/data/%",
            "/mnt/data/%C3",
            "sandbox:",
            "sandbox:/mnt/data/",
            "<",
            "<>",
            "</mnt/data/",
            "</mnt/data/>",
            "/mnt/data/(",
            "/mnt/data/)",
            "/mnt/data/((((",
            "/mnt/data/.",
            "/mnt/data/é.",
            "/mnt/data/🙂",
            "🙂/mnt/data/🙂",
            "é/mnt/data/é",
            "/mnt/data/\u{0}",
            "\u{FEFF}/mnt/data",
            "/mnt/data/\u{202E}x",
            "/mnt/data/ü%FF",
            "/srv/ws/abc/data",
            "/srv/ws/abc/data.",
            "file://",
            "file:///mnt/data",
            "/srv/ws/abc/inputs/srv/ws/abc/data",
        ];
        for text in tricky {
            check_invariants(text);
            check_invariants(&text.repeat(3));
        }
    }

    #[test]
    fn fuzz_char_soup_does_not_panic() {
        const SOUP: &[&str] = &[
            "/",
            "m",
            "n",
            "t",
            "d",
            "a",
            ":",
            "s",
            "%",
            " ",
            "é",
            ")",
            "(",
            "<",
            ">",
            ".",
            "..",
            "%2",
            "%2E",
            "%C3",
            "%A9",
            "🙂",
            "\n",
            "[",
            "]",
            "'",
            "\"",
            "`",
            "!",
            "?",
            ",",
            "/mnt/data",
            "/mnt/inputs",
            "sandbox:",
            "/srv/ws/abc/",
            "data",
            "inputs",
            "file://",
            "\\",
            "\u{0}",
        ];
        // A small xorshift generator keeps the test deterministic without dependencies.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = next() % 40;
            let text: String = (0..len)
                .map(|_| SOUP[(next() % SOUP.len() as u64) as usize])
                .collect();
            check_invariants(&text);
        }
    }

    #[test]
    fn large_adversarial_inputs_are_processed() {
        let mib = 1 << 20;
        let patterns = [
            "(/mnt/data/",
            "</mnt/data/a ",
            "<sandbox:/mnt/data/x",
            "/srv/ws/abc/dat",
            "/srv/ws/abc/data",
            "/mnt/data/a.csv. ",
            ".",
            "(",
        ];
        let m = map();
        for pattern in patterns {
            let text = pattern.repeat(mib / pattern.len());
            let host = to_host_paths(&text, &m);
            assert_eq!(
                to_sandbox_paths(&host, &m).len(),
                to_sandbox_paths(&text, &m).len()
            );
            assert_eq!(render_links(&text, |_| None), text);
            let _ = render_links(&text, |rel| Some(rel.to_owned()));
        }
        let text = format!("/mnt/data/{}", "a".repeat(mib));
        assert_eq!(
            render_links(&text, |rel| Some(rel.len().to_string())),
            mib.to_string()
        );
    }

    #[test]
    fn workspace_refs_become_links_when_known() {
        let text = "see workspace://file_ab12, (workspace://file_zz) and xworkspace://file_ab12 \
                    or workspace:// or workspace://file_ab12.";
        let ids: Vec<&str> = workspace_refs(text).collect();
        assert_eq!(ids, ["file_ab12", "file_zz", "file_ab12"]);
        let rendered = render_workspace_refs(text, |id| {
            (id == "file_ab12").then(|| "https://h/f/file_ab12".to_owned())
        });
        assert_eq!(
            rendered,
            "see https://h/f/file_ab12, (workspace://file_zz) and xworkspace://file_ab12 \
             or workspace:// or https://h/f/file_ab12."
        );
        assert_eq!(render_workspace_refs("plain", |_| None), "plain");
    }
}
