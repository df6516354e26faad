//! How the tools of `tools.rs` write their answers for a model: a run as status, output,
//! result or error and new files; file listings; and the cuts that keep every answer within
//! its limit (long output keeps its head and tail, since its end often says most).

use std::fmt::Write as _;

use super::*;

/// The most files one answer lists (and returns).
pub(super) const MAX_LISTED_FILES: usize = 50;
/// The most traceback lines a failed run shows, counted from the end.
const TRACEBACK_LINES: usize = 8;

/// One file as a model reads of it: where the code sees it, its type, size and reference.
pub(super) fn describe(file: &FileRecord) -> String {
    let place = if file.path.is_empty() {
        file.name.as_str()
    } else {
        file.path.as_str()
    };
    format!(
        "{place} ({}, {} bytes, workspace://{})",
        file.content_type, file.size, file.id
    )
}

/// Lists `here` (the message's files) and `elsewhere` (the chat's other files) into
/// `content`, stopping with a count of the rest before `max_bytes`.
pub(super) fn write_listing(
    content: &mut String,
    here: &[FileRecord],
    elsewhere: &[FileRecord],
    max_bytes: usize,
) {
    let sections = [
        (
            "Files in /mnt/data for this message (the code reads and writes them there):",
            here,
            true,
        ),
        (
            "Files of other messages of this chat (not in /mnt/data here; read_file takes \
             their workspace:// reference):",
            elsewhere,
            false,
        ),
    ];
    let budget = max_bytes.saturating_sub(64);
    for (heading, files, in_data) in sections {
        if files.is_empty() {
            continue;
        }
        let _ = writeln!(content, "{heading}");
        for (index, file) in files.iter().enumerate() {
            // A file of another message is named by its name, since its path is not this
            // message's.
            let line = if in_data {
                format!("- {}\n", describe(file))
            } else {
                format!(
                    "- {} ({}, {} bytes, workspace://{})\n",
                    file.name, file.content_type, file.size, file.id
                )
            };
            if content.len() + line.len() > budget {
                let _ = writeln!(content, "... and {} more", files.len() - index);
                break;
            }
            content.push_str(&line);
        }
    }
}

/// A run told to a model: status, output (long output cut in the middle), the result or
/// error, and the new files, within `max_bytes`.
pub(super) fn run_content(report: &RunReport, max_bytes: usize) -> String {
    let run = &report.run;
    let mut head = format!("status: {}", <&str>::from(run.status));
    if let Some(code) = run.exit_code {
        let _ = write!(head, " (exit code {code})");
    }
    if let Some(reason) = &run.reason {
        let _ = write!(head, ", reason: {reason}");
    }
    head.push('\n');
    if let Some(kernel) = run.kernel.as_ref().filter(|kernel| kernel.restarted) {
        let _ = writeln!(
            head,
            "note: a fresh interpreter ran this code ({}); variables of earlier runs are gone",
            kernel
                .reason
                .as_deref()
                .unwrap_or("the old one was released")
        );
    }
    let mut tail = String::new();
    for output in &run.outputs {
        match output {
            RunOutput::Result { data } => {
                if let Some(text) = data.get("text/plain") {
                    let _ = writeln!(tail, "result:\n{}", cut_middle(text, 2048));
                }
            }
            RunOutput::Error {
                ename,
                evalue,
                traceback,
            } => {
                let _ = writeln!(tail, "error: {ename}: {evalue}");
                let lines: Vec<String> = traceback
                    .iter()
                    .flat_map(|entry| entry.lines().map(strip_ansi).collect::<Vec<_>>())
                    .collect();
                let shown = &lines[lines.len().saturating_sub(TRACEBACK_LINES)..];
                if !shown.is_empty() {
                    let _ = writeln!(
                        tail,
                        "traceback (last lines):\n{}",
                        cut_middle(&shown.join("\n"), 2048)
                    );
                }
            }
            RunOutput::Image { file_id } => {
                let _ = writeln!(tail, "figure: workspace://{file_id}");
            }
        }
    }
    let new_files: Vec<&FileRecord> = report
        .files
        .iter()
        .filter(|file| file.source != FileSource::Figure)
        .collect();
    if !new_files.is_empty() {
        let _ = writeln!(tail, "new files (link them as sandbox:/mnt/data/<name>):");
        for file in new_files.iter().take(MAX_LISTED_FILES) {
            let _ = writeln!(tail, "- {}", describe(file));
        }
        if new_files.len() > MAX_LISTED_FILES {
            let _ = writeln!(tail, "... and {} more", new_files.len() - MAX_LISTED_FILES);
        }
    }
    for truncation in &run.truncated {
        let _ = writeln!(tail, "left out: {}: {}", truncation.path, truncation.reason);
    }
    // Output gets what the rest leaves; stdout two thirds of it when there is stderr too.
    let room = max_bytes.saturating_sub(head.len() + tail.len() + 64);
    let stdout_room = if run.stderr.is_empty() {
        room
    } else {
        room.saturating_mul(2) / 3
    };
    let stderr_room = room.saturating_sub(stdout_room.min(run.stdout.len()));
    let mut content = head;
    if !run.stdout.is_empty() {
        let _ = writeln!(content, "stdout:\n{}", cut_middle(&run.stdout, stdout_room));
    }
    if !run.stderr.is_empty() {
        let _ = writeln!(content, "stderr:\n{}", cut_middle(&run.stderr, stderr_room));
    }
    content.push_str(&tail);
    content
}

/// `text` within `max_bytes`, keeping its head and its tail around a marker that says how
/// many bytes were cut (output's end often says most: the last lines, the error).
fn cut_middle(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let marker_room = 48;
    let keep = max_bytes.saturating_sub(marker_room);
    let head_end = floor_boundary(text, keep / 2);
    let tail_start = ceil_boundary(text, text.len() - (keep - keep / 2));
    let cut = tail_start - head_end;
    format!(
        "{}\n[... {cut} bytes cut ...]\n{}",
        &text[..head_end],
        &text[tail_start..]
    )
}

/// `content` within `max_bytes`, cut on a character boundary with a marker saying so.
pub(super) fn bound(content: &str, max_bytes: usize) -> String {
    if content.len() <= max_bytes {
        return content.to_owned();
    }
    let marker = format!("\n[cut: the answer is limited to {max_bytes} bytes]");
    let end = floor_boundary(content, max_bytes.saturating_sub(marker.len()));
    format!("{}{marker}", &content[..end])
}

/// The last character boundary of `text` at or before `at` (`str::floor_char_boundary` is
/// newer than the crate's minimum Rust).
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The first character boundary of `text` at or after `at`.
fn ceil_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// `line` without ANSI escape sequences (IPython colours its tracebacks).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // A sequence is ESC [ parameters and a final letter.
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_keeps_head_and_tail() {
        let text = format!("{}{}", "a".repeat(10_000), "é".repeat(5_000));
        let cut = cut_middle(&text, 1000);
        assert!(cut.len() <= 1000, "{}", cut.len());
        assert!(cut.starts_with('a') && cut.ends_with('é'));
        assert!(cut.contains("bytes cut"), "{cut}");
        let bounded = bound(&text, 777);
        assert!(bounded.len() <= 777, "{}", bounded.len());
        assert!(bounded.ends_with("bytes]"));
        assert_eq!(bound("short", 777), "short");
    }

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;31mValueError\u{1b}[0m: x"),
            "ValueError: x"
        );
    }
}
