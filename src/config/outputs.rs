//! The `[outputs]` section: which files a run writes are registered, by extension. Its own file
//! because the extension check is behaviour, not only a setting: it reads a name's bytes, so
//! that a name that is not valid UTF-8 is still judged (and reported).

use serde::{Deserialize, Serialize};

/// Which files a run writes are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputsConfig {
    /// File extensions (without the dot, case-insensitive) that are registered.
    pub tracked_extensions: Vec<String>,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            tracked_extensions: ["xlsx", "xls", "csv", "pdf"].map(String::from).to_vec(),
        }
    }
}

impl OutputsConfig {
    /// Whether a file with this name is registered when a run creates or changes it. The
    /// check reads the name's bytes, so that a name that is not valid UTF-8 but ends in a
    /// tracked extension counts as an output (to be reported, since it cannot be registered).
    pub fn is_tracked(&self, name: &std::ffi::OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let name = name.as_bytes();
        let Some(dot) = name.iter().rposition(|&byte| byte == b'.') else {
            return false;
        };
        let extension = &name[dot + 1..];
        self.tracked_extensions.iter().any(|tracked| {
            tracked
                .trim_start_matches('.')
                .as_bytes()
                .eq_ignore_ascii_case(extension)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_extensions_ignore_case_and_dots() {
        let outputs = OutputsConfig {
            tracked_extensions: vec!["xlsx".into(), ".CSV".into()],
        };
        let tracked = |name: &[u8]| {
            use std::os::unix::ffi::OsStrExt;
            outputs.is_tracked(std::ffi::OsStr::from_bytes(name))
        };
        assert!(tracked(b"report.XLSX"));
        assert!(tracked(b"a.b.csv"));
        assert!(!tracked(b"csv"));
        assert!(!tracked(b"report.xlsx.txt"));
        assert!(!tracked(b"notes.txt"));
        // Names that are not valid UTF-8 are judged by their extension's bytes.
        assert!(tracked(b"r\xff.csv"));
        assert!(!tracked(b"r.cs\xff"));
        assert!(!tracked(b"r.\xffcsv"));
    }
}
