//! The names attachments get: a client's file name cut to its last part, cleaned of control
//! characters and dot names, and shortened with its extension kept. Pure functions over
//! strings, apart from the folders they name things in.

/// The longest file name given to an attachment, in bytes (file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;

/// The last part of a file name a client sent, where both `/` and `\` separate folders (a
/// browser on Windows sends `C:\Users\a\report.csv`): `report.csv`. Parts that are empty,
/// `.` or `..` (spaces around them aside) never count, so `reports/..` is `reports`; `None`
/// when no part is left. The part is returned with its surrounding spaces trimmed.
pub fn base_name(raw: &str) -> Option<&str> {
    raw.rsplit(['/', '\\'])
        .map(str::trim)
        .find(|part| !matches!(*part, "" | "." | ".."))
}

/// Turns a name a user chose into a safe file name: only its [`base_name`] (`file` when it
/// has none), no control characters, no leading or trailing spaces, never `.` or `..`, at most
/// [`MAX_NAME_BYTES`] bytes with the extension kept.
pub fn sanitize_name(raw: &str) -> String {
    let cleaned: String = base_name(raw)
        .unwrap_or("file")
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    // A base name is trimmed and not a dot name, and replacing control characters keeps it so.
    let name = cleaned.trim().to_owned();
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    let (stem, extension) = split_extension(&name);
    // A pathological "extension" (a name with one early dot) is not worth keeping whole.
    let extension = if extension.len() > 16 { "" } else { extension };
    let stem = truncate_to_bytes(stem, MAX_NAME_BYTES - extension.len());
    // Cutting can leave spaces at the end of the stem, or only a dot name (`..xxx…` keeps
    // `.`): neither may survive.
    let name = format!("{}{extension}", stem.trim_end());
    match name.trim() {
        "" | "." | ".." => "file".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

/// The `counter`th alternative to a taken name: `report (1).csv`, `report (2).csv`, ...,
/// shortened (extension kept) so that it stays within [`MAX_NAME_BYTES`].
pub fn numbered_name(name: &str, counter: u64) -> String {
    let (stem, extension) = split_extension(name);
    let suffix = format!(" ({counter})");
    let stem = truncate_to_bytes(
        stem,
        MAX_NAME_BYTES.saturating_sub(suffix.len() + extension.len()),
    );
    format!("{stem}{suffix}{extension}")
}

/// Splits `report.csv` into `("report", ".csv")`; a leading dot (`.env`) is not an extension.
pub(super) fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(index) if index > 0 => name.split_at(index),
        _ => (name, ""),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub(super) fn truncate_to_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("report.csv"), "report.csv");
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\Users\\me\\data.csv"), "data.csv");
        assert_eq!(sanitize_name("reports/2024/"), "2024");
        assert_eq!(sanitize_name("a\\b/ .. /./"), "b");
        assert_eq!(sanitize_name(".."), "file");
        assert_eq!(sanitize_name("/\\./"), "file");
        assert_eq!(sanitize_name("  "), "file");
        assert_eq!(sanitize_name("a\u{0}b\nc\u{7f}.csv"), "a_b_c_.csv");
        assert_eq!(sanitize_name("отчёт 2024.xlsx"), "отчёт 2024.xlsx");
        // Found by the property tests: a long name whose only dots lead it.
        assert_eq!(sanitize_name(&format!("..{}", "x".repeat(250))), "file");
        assert_eq!(
            sanitize_name(&format!("{} {}", "a".repeat(199), "b".repeat(50))),
            "a".repeat(199)
        );
        let long = format!("{}.xlsx", "é".repeat(300));
        let short = sanitize_name(&long);
        assert!(short.len() <= MAX_NAME_BYTES, "{}", short.len());
        assert!(short.ends_with("é.xlsx"), "{short}");
    }
}
