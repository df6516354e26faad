//! The tools a chat backend hands to a model (`GET /v1/tools`): their names, the words the
//! model reads about them, and the JSON Schemas of their arguments. Apart from `tools.rs`,
//! which carries them out, because this is text for a model rather than behaviour; the
//! argument types of `tools.rs` must accept exactly what these schemas describe.

use serde_json::{Value, json};

use super::{Error, Result};

/// The most text a tool answers with when the caller does not say.
pub const DEFAULT_CONTENT_BYTES: usize = 8 * 1024;
/// The most text a caller may ask a tool to answer with: more would flood a model's context.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// The least text a caller may ask for: below it not even a refusal fits.
pub const MIN_CONTENT_BYTES: usize = 256;

/// A tool a model may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Runs Python in the message's interpreter.
    RunCode,
    /// Lists the files of the message and its chat.
    ListFiles,
    /// Answers a file's text.
    ReadFile,
    /// Stores text as a file of the message.
    WriteFile,
    /// Deletes one of the user's files.
    DeleteFile,
}

impl Tool {
    /// Every tool, in the order they are listed.
    pub const ALL: [Self; 5] = [
        Self::RunCode,
        Self::ListFiles,
        Self::ReadFile,
        Self::WriteFile,
        Self::DeleteFile,
    ];

    /// The name a model calls it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::RunCode => "run_code",
            Self::ListFiles => "list_files",
            Self::ReadFile => "read_file",
            Self::WriteFile => "write_file",
            Self::DeleteFile => "delete_file",
        }
    }

    /// The tool called `name`, or [`Error::NoSuchTool`] naming the tools there are.
    pub fn named(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|tool| tool.name() == name)
            .ok_or_else(|| Error::NoSuchTool(name.chars().take(64).collect()))
    }

    /// Whether calling it runs code, and so must first pass the limit on runs in flight.
    pub fn runs_code(self) -> bool {
        self == Self::RunCode
    }

    /// What the model is told the tool does and answers.
    fn description(self) -> &'static str {
        match self {
            Self::RunCode => {
                "Run Python 3 code in a sandbox with no network. The files of the \
                 conversation are in /mnt/data (read the files the user attached there); \
                 save every file you want to give the user under /mnt/data too. Variables \
                 and imports persist between calls for the same message, like a notebook, \
                 unless `restart` is true. Returns the status, exit code, stdout and stderr \
                 (long output is cut in the middle), the value of the last expression, the \
                 error with a short traceback, and the new files with their /mnt/data paths \
                 and workspace:// references. To give the user a file, link it in your \
                 answer as sandbox:/mnt/data/<name>."
            }
            Self::ListFiles => {
                "List the files of this conversation: those in /mnt/data for this message \
                 (files the user attached and files the code wrote) and files of earlier \
                 messages of the chat, with path, size, type and workspace:// reference."
            }
            Self::ReadFile => {
                "Read a file's text: csv, txt, json and other text files as they are, xlsx \
                 workbooks as CSV per sheet, PDF files as their text. The answer is cut when \
                 long; use run_code to read the rest or to analyse a file. `path` is a \
                 /mnt/data path (`/mnt/data/sales.csv` or just `sales.csv`) or a \
                 workspace://<id> reference from list_files."
            }
            Self::WriteFile => {
                "Save text as a file in /mnt/data for this message (a csv, txt, md, json, \
                 ... file), so that the user can download it and run_code can read it. \
                 Returns the /mnt/data path it was saved at (a name that is taken gets a \
                 number). Folders are not kept: `notes/a.txt` is saved as /mnt/data/a.txt."
            }
            Self::DeleteFile => {
                "Delete one of the user's files, named as read_file names them. A file the \
                 user attached to messages of this chat needs their consent: the first call \
                 says so, and after asking the user you call it again with `confirm: true`."
            }
        }
    }

    /// The JSON Schema of its arguments.
    pub fn parameters(self) -> Value {
        let path = json!({
            "type": "string",
            "description": "The file: /mnt/data/<name>, <name>, sandbox:/mnt/data/<name>, \
                            or workspace://<file id>."
        });
        let (properties, required) = match self {
            Self::RunCode => (
                json!({
                    "code": {"type": "string", "description": "The Python code to run."},
                    "timeout_seconds": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Stop the code after this many seconds (the server's \
                                        default when absent)."
                    },
                    "restart": {
                        "type": "boolean",
                        "description": "Start from a fresh interpreter, forgetting the \
                                        variables of earlier runs (default false)."
                    }
                }),
                vec!["code"],
            ),
            Self::ListFiles => (
                json!({
                    "q": {
                        "type": "string",
                        "description": "Only the files whose name contains this text, \
                                        whatever its case."
                    }
                }),
                vec![],
            ),
            Self::ReadFile => (json!({ "path": path }), vec!["path"]),
            Self::WriteFile => (
                json!({
                    "path": {
                        "type": "string",
                        "description": "Where to save it: /mnt/data/<name> or <name>."
                    },
                    "content": {"type": "string", "description": "The file's text."}
                }),
                vec!["path", "content"],
            ),
            Self::DeleteFile => (
                json!({
                    "path": path,
                    "confirm": {
                        "type": "boolean",
                        "description": "Delete a file the user attached to messages of this \
                                        chat; only after the user agreed (default false)."
                    }
                }),
                vec!["path"],
            ),
        };
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// Its definition as a chat backend hands it to a model (OpenAI's `tools` entries).
    pub fn definition(self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name(),
                "description": self.description(),
                "parameters": self.parameters(),
            }
        })
    }

    /// One line saying what arguments it takes, for a model that got them wrong:
    /// `{"code": string (required), "restart": boolean}`.
    pub(super) fn usage(self) -> String {
        let parameters = self.parameters();
        let required: Vec<&str> = parameters["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let fields: Vec<String> = parameters["properties"]
            .as_object()
            .map(|properties| {
                properties
                    .iter()
                    .map(|(name, schema)| {
                        let kind = schema["type"].as_str().unwrap_or("any");
                        let needed = if required.contains(&name.as_str()) {
                            " (required)"
                        } else {
                            " (optional)"
                        };
                        format!("\"{name}\": {kind}{needed}")
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!("{{{}}}", fields.join(", "))
    }
}

/// The definitions of every tool, as `GET /v1/tools` lists them.
pub fn definitions() -> Vec<Value> {
    Tool::ALL.into_iter().map(Tool::definition).collect()
}

/// The content limit a caller asked for: the default when absent, at most
/// [`MAX_CONTENT_BYTES`]; below [`MIN_CONTENT_BYTES`] it is refused.
pub fn content_limit(asked: Option<u64>) -> Result<usize> {
    match asked {
        None => Ok(DEFAULT_CONTENT_BYTES),
        Some(bytes) if bytes < MIN_CONTENT_BYTES as u64 => Err(Error::invalid(
            "max_content_bytes",
            format!("must be at least {MIN_CONTENT_BYTES}"),
        )),
        Some(bytes) => Ok(usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_CONTENT_BYTES)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_found_by_its_name() {
        for tool in Tool::ALL {
            assert_eq!(Tool::named(tool.name()).expect("known"), tool);
            let definition = tool.definition();
            assert_eq!(definition["function"]["name"], tool.name());
            assert_eq!(definition["function"]["parameters"]["type"], "object");
        }
        let error = Tool::named("rm_rf").expect_err("unknown");
        assert!(error.to_string().contains("run_code"), "{error}");
    }

    #[test]
    fn usage_names_required_fields() {
        let usage = Tool::RunCode.usage();
        assert!(usage.contains("\"code\": string (required)"), "{usage}");
        assert!(usage.contains("\"restart\": boolean (optional)"), "{usage}");
    }

    #[test]
    fn content_limits_are_bounded() {
        assert_eq!(content_limit(None).expect("default"), DEFAULT_CONTENT_BYTES);
        assert_eq!(
            content_limit(Some(1 << 30)).expect("big"),
            MAX_CONTENT_BYTES
        );
        assert_eq!(content_limit(Some(1000)).expect("small"), 1000);
        assert!(content_limit(Some(10)).is_err());
    }
}
