//! The `[uploads]` section: which files a user may upload, by the extension of the name they
//! give. Its own file because the check is behaviour, not only a setting: it judges the name
//! the file is kept under (its last part), so that `report.csv/..` or a name without an
//! extension cannot slip past it.

use serde::{Deserialize, Serialize};

/// Which uploads are accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// File extensions (without the dot, case-insensitive) an upload's name may end in. An
    /// empty list is refused when the configuration is loaded.
    pub allowed_extensions: Vec<String>,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        // Documents, data and images a code interpreter works with, and `bin` for raw data.
        let allowed = [
            "csv", "tsv", "txt", "md", "json", "jsonl", "xml", "yaml", "yml", "xlsx", "xls",
            "xlsm", "ods", "docx", "pptx", "pdf", "parquet", "feather", "sqlite", "db", "zip",
            "png", "jpg", "jpeg", "gif", "webp", "svg", "html", "py", "ipynb", "log", "bin",
        ];
        Self {
            allowed_extensions: allowed.map(String::from).to_vec(),
        }
    }
}

impl UploadsConfig {
    /// Whether a file kept under `name` (its last part, as the upload keeps it) may be
    /// uploaded: its extension, after the last dot, is one of the allowed ones.
    pub fn is_allowed(&self, name: &str) -> bool {
        let Some((stem, extension)) = name.rsplit_once('.') else {
            return false;
        };
        !stem.is_empty()
            && self.allowed_extensions.iter().any(|allowed| {
                allowed
                    .trim_start_matches('.')
                    .eq_ignore_ascii_case(extension)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_extensions_ignore_case_and_dots() {
        let uploads = UploadsConfig {
            allowed_extensions: vec!["xlsx".into(), ".CSV".into()],
        };
        assert!(uploads.is_allowed("report.XLSX"));
        assert!(uploads.is_allowed("a.b.csv"));
        assert!(!uploads.is_allowed("csv"));
        assert!(!uploads.is_allowed(".csv"));
        assert!(!uploads.is_allowed("report.xlsx.exe"));
        assert!(!uploads.is_allowed("report."));
        assert!(!uploads.is_allowed("notes.txt"));
    }

    #[test]
    fn the_default_admits_what_an_interpreter_reads() {
        let uploads = UploadsConfig::default();
        for name in [
            "sales.csv",
            "report.xlsx",
            "paper.pdf",
            "chart.PNG",
            "big.bin",
        ] {
            assert!(uploads.is_allowed(name), "{name}");
        }
        for name in ["run.exe", "script.sh", "upload", "archive.tar.gz"] {
            assert!(!uploads.is_allowed(name), "{name}");
        }
    }

    #[test]
    fn an_empty_allowlist_is_refused() {
        let mut config = crate::config::Config::default();
        config.uploads.allowed_extensions.clear();
        assert!(config.validate().is_err());
    }
}
