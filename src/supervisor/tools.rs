//! Tools for a model (`POST /v1/tools/{name}`): the model's own arguments in, text for the
//! model out. Each tool goes through the same code as the route a person's client would use
//! (runs, uploads, text views, deletion), so the same checks and limits apply. Whatever the
//! model got wrong (arguments that do not parse, a file that does not exist, a run refused as
//! too large) is answered as text it can act on; only the backend's mistakes (another user's
//! message) and outages are errors. Every answer is bounded by the caller's content limit.

use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::tool_defs::Tool;
use super::tool_text::{bound, describe, run_content, write_listing};
use super::*;

use super::tool_text::MAX_LISTED_FILES;

/// A model's call of a tool, as the backend passes it on.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// The chat of the message.
    pub chat_id: ChatId,
    /// The message the model is answering; its workspace and interpreter are used.
    pub message_id: MessageId,
    /// The arguments as the model produced them: an object, or a string holding one.
    pub arguments: Value,
    /// The most bytes of content to answer with (see [`super::tool_defs::content_limit`]).
    pub max_content_bytes: usize,
}

/// What a tool answers: text for the model, and the files it concerns.
#[derive(Debug, Clone, Default)]
pub struct ToolAnswer {
    /// Text for the model, at most the content limit.
    pub content: String,
    /// The files the answer names (written, read, listed).
    pub files: Vec<FileRecord>,
}

impl ToolAnswer {
    /// An answer of `content` alone, bounded by `max_bytes`.
    pub fn text(content: impl Into<String>, max_bytes: usize) -> Self {
        Self {
            content: bound(&content.into(), max_bytes),
            files: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunCodeArgs {
    code: String,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    restart: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default)]
    q: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteArgs {
    path: String,
    #[serde(default)]
    confirm: bool,
}

impl Supervisor {
    /// Carries out `tool` for `owner`. The message is bound first, as a run binds it, so
    /// another user's message is [`Error::NotFound`] whatever the arguments.
    pub async fn call_tool(&self, owner: &Owner, tool: Tool, call: ToolCall) -> Result<ToolAnswer> {
        let max = call.max_content_bytes;
        self.claim(owner, &call.chat_id, &call.message_id).await?;
        let answer = match tool {
            Tool::RunCode => match parse_arguments::<RunCodeArgs>(tool, &call.arguments) {
                Ok(args) => self.run_code_tool(owner, &call, args).await?,
                Err(explained) => ToolAnswer::text(explained, max),
            },
            Tool::ListFiles => match parse_arguments::<ListArgs>(tool, &call.arguments) {
                Ok(args) => {
                    self.list_files_tool(owner, &call, args.q.as_deref())
                        .await?
                }
                Err(explained) => ToolAnswer::text(explained, max),
            },
            Tool::ReadFile => match parse_arguments::<PathArgs>(tool, &call.arguments) {
                Ok(args) => self.read_file_tool(owner, &call, &args.path).await?,
                Err(explained) => ToolAnswer::text(explained, max),
            },
            Tool::WriteFile => match parse_arguments::<WriteArgs>(tool, &call.arguments) {
                Ok(args) => self.write_file_tool(owner, &call, args).await?,
                Err(explained) => ToolAnswer::text(explained, max),
            },
            Tool::DeleteFile => match parse_arguments::<DeleteArgs>(tool, &call.arguments) {
                Ok(args) => self.delete_file_tool(owner, &call, args).await?,
                Err(explained) => ToolAnswer::text(explained, max),
            },
        };
        Ok(ToolAnswer {
            content: bound(&answer.content, max),
            files: answer.files,
        })
    }

    async fn run_code_tool(
        &self,
        owner: &Owner,
        call: &ToolCall,
        args: RunCodeArgs,
    ) -> Result<ToolAnswer> {
        let request = RunRequest {
            chat_id: call.chat_id.clone(),
            message_id: call.message_id.clone(),
            code: args.code,
            language: LANGUAGES[0].to_owned(),
            file_ids: Vec::new(),
            timeout: args.timeout_seconds.map(Duration::from_secs),
            restart: args.restart,
            init_code: None,
            // The error is shown once, as an error with its traceback, not again on stderr.
            tracebacks_on_stderr: false,
        };
        match self.run(owner, request, None).await {
            Ok(report) => Ok(ToolAnswer {
                content: run_content(&report, call.max_content_bytes),
                files: report.files,
            }),
            Err(error) if is_refusal(&error) => Ok(ToolAnswer::text(
                // The run route calls the field `timeout_secs`; the model knows this one.
                format!("The code was not run: {error}.")
                    .replace("timeout_secs", "timeout_seconds"),
                call.max_content_bytes,
            )),
            Err(error) => Err(error),
        }
    }

    async fn list_files_tool(
        &self,
        owner: &Owner,
        call: &ToolCall,
        q: Option<&str>,
    ) -> Result<ToolAnswer> {
        let (here, elsewhere) = self.files_of_call(owner, call, q).await?;
        let mut content = String::new();
        if here.is_empty() && elsewhere.is_empty() {
            content.push_str(match q {
                Some(_) => "No file name contains that text.",
                None => {
                    "There are no files yet. Files the user attaches and files the code \
                     writes under /mnt/data are listed here."
                }
            });
        } else {
            write_listing(&mut content, &here, &elsewhere, call.max_content_bytes);
        }
        let files = here.into_iter().chain(elsewhere).collect();
        Ok(ToolAnswer { content, files })
    }

    /// The files a call can name: this message's (in `/mnt/data`, newest at a path only),
    /// and the other live files of the chat; each at most [`MAX_LISTED_FILES`], filtered by
    /// name when `q` is given.
    async fn files_of_call(
        &self,
        owner: &Owner,
        call: &ToolCall,
        q: Option<&str>,
    ) -> Result<(Vec<FileRecord>, Vec<FileRecord>)> {
        let matches = |file: &FileRecord| {
            q.is_none_or(|q| file.name.to_lowercase().contains(&q.to_lowercase()))
        };
        let mut here: Vec<FileRecord> = Vec::new();
        // Newest first, so that of the files a path had only the newest is kept.
        for file in self
            .message_files(owner, &call.message_id, true)
            .await?
            .into_iter()
            .rev()
        {
            // Figures have no path: each is a file of its own.
            let shadowed = !file.path.is_empty() && here.iter().any(|kept| kept.path == file.path);
            if matches(&file) && !shadowed {
                here.push(file);
            }
        }
        here.truncate(MAX_LISTED_FILES);
        let listing = FileListing {
            chat_id: Some(call.chat_id.to_string()),
            q: q.map(str::to_owned),
            limit: Some(i64::try_from(MAX_LISTED_FILES * 2).unwrap_or(100)),
            ..FileListing::default()
        };
        let mut elsewhere = self.list_files(owner, listing).await?.files;
        elsewhere.retain(|file| {
            file.message_id.as_ref() != Some(&call.message_id)
                && !here.iter().any(|kept| kept.id == file.id)
        });
        elsewhere.truncate(MAX_LISTED_FILES);
        Ok((here, elsewhere))
    }

    /// The file a model names by `path` (see [`Tool::ReadFile`]): a `workspace://` id of any
    /// live file of `owner`, or a path of this message's files. Never anything else: names
    /// are looked up in the catalog, not on disk.
    async fn resolve(
        &self,
        owner: &Owner,
        call: &ToolCall,
        path: &str,
    ) -> Result<Option<FileRecord>> {
        let path = path.trim();
        if let Some(id) = path.strip_prefix("workspace://") {
            let id = id.trim_end_matches('/');
            let well_formed = id.len() <= 64
                && id.strip_prefix("file_").is_some_and(|rest| {
                    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())
                });
            if !well_formed {
                return Ok(None);
            }
            return match self.file(owner, &FileId::from_stored(id)).await {
                Ok(file) => Ok(Some(file)),
                Err(Error::NotFound(_)) => Ok(None),
                Err(error) => Err(error),
            };
        }
        let Some(relative) = data_relative(path) else {
            return Ok(None);
        };
        let (here, _) = self.files_of_call(owner, call, None).await?;
        let wanted = attachment_path(relative);
        if let Some(file) = here.iter().find(|file| file.path == wanted) {
            return Ok(Some(file.clone()));
        }
        // A bare name may name a file the code wrote in a folder, when only one has it.
        let mut named = here.into_iter().filter(|file| file.name == relative);
        Ok(match (named.next(), named.next()) {
            (Some(file), None) => Some(file),
            _ => None,
        })
    }

    async fn read_file_tool(
        &self,
        owner: &Owner,
        call: &ToolCall,
        path: &str,
    ) -> Result<ToolAnswer> {
        let max = call.max_content_bytes;
        let Some(file) = self.resolve(owner, call, path).await? else {
            return self.not_found(owner, call, path).await;
        };
        let mut content = String::new();
        let _ = writeln!(content, "{}:", describe(&file));
        // The text gets what the heading and the closing note leave of the limit.
        let room = max.saturating_sub(content.len() + 120).max(1);
        let room = u64::try_from(room)
            .unwrap_or(MAX_TEXT_BYTES)
            .min(MAX_TEXT_BYTES);
        match self.file_text(owner, &file.id, Some(room)).await {
            Ok(text) => {
                content.push_str(&text.text);
                if text.truncated {
                    content.push_str(
                        "\n[the file has more text than this; use run_code to read the rest]",
                    );
                }
            }
            Err(Error::Unsupported(reason)) => {
                content = format!(
                    "{} cannot be shown as text ({reason}). Use run_code to inspect it.",
                    describe(&file)
                );
            }
            Err(Error::NotFound(_)) => return self.not_found(owner, call, path).await,
            Err(error) => return Err(error),
        }
        Ok(ToolAnswer {
            content,
            files: vec![file],
        })
    }

    /// The answer to a path that names no file: what does exist.
    async fn not_found(&self, owner: &Owner, call: &ToolCall, path: &str) -> Result<ToolAnswer> {
        let (here, elsewhere) = self.files_of_call(owner, call, None).await?;
        let mut content = format!("There is no file {path:?}. ");
        if here.is_empty() && elsewhere.is_empty() {
            content.push_str("This conversation has no files yet.");
        } else {
            content.push_str("These files exist:\n");
            write_listing(&mut content, &here, &elsewhere, call.max_content_bytes);
        }
        Ok(ToolAnswer {
            content,
            files: Vec::new(),
        })
    }

    async fn write_file_tool(
        &self,
        owner: &Owner,
        call: &ToolCall,
        args: WriteArgs,
    ) -> Result<ToolAnswer> {
        let Some(relative) = data_relative(args.path.trim()) else {
            return Ok(ToolAnswer::text(
                format!(
                    "Not written: {:?} is not under /mnt/data. Files can only be saved in \
                     /mnt/data; give a name such as \"notes.txt\".",
                    args.path
                ),
                call.max_content_bytes,
            ));
        };
        let upload = UploadMeta {
            name: relative.to_owned(),
            chat_id: Some(call.chat_id.to_string()),
            message_id: Some(call.message_id.to_string()),
            on_conflict: None,
        };
        match self.upload(owner, upload, args.content.as_bytes()).await {
            Ok(file) => Ok(ToolAnswer {
                content: format!(
                    "Saved {} bytes at {} (workspace://{}). The next run_code sees it there; \
                     link it for the user as sandbox:{}.",
                    file.size, file.path, file.id, file.path
                ),
                files: vec![file],
            }),
            Err(error) if is_refusal(&error) => Ok(ToolAnswer::text(
                format!("Not written: {error}."),
                call.max_content_bytes,
            )),
            Err(error) => Err(error),
        }
    }

    async fn delete_file_tool(
        &self,
        owner: &Owner,
        call: &ToolCall,
        args: DeleteArgs,
    ) -> Result<ToolAnswer> {
        let Some(file) = self.resolve(owner, call, &args.path).await? else {
            return self.not_found(owner, call, &args.path).await;
        };
        let content = match self
            .delete_file_confirmed(owner, &file.id, args.confirm)
            .await
        {
            // Deletion takes an attachment out of the workspaces, but leaves the bytes the
            // code wrote where it wrote them; the model should know, not find out.
            Ok(()) if file.source == FileSource::Upload => format!(
                "Deleted {}. It is gone from the user's files and downloads, and from \
                 /mnt/data.",
                describe(&file)
            ),
            Ok(()) => format!(
                "Deleted {}. It is gone from the user's files and downloads; the copy the \
                 code wrote stays in /mnt/data of its message until code removes it.",
                describe(&file)
            ),
            Err(Error::ConfirmationRequired { message_ids, .. }) => format!(
                "Not deleted: {} is a file the user attached to {} message(s) of this chat, \
                 and deleting it takes it from them too. Ask the user whether to delete it; \
                 if they agree, call delete_file again with {{\"path\": {:?}, \"confirm\": \
                 true}}.",
                describe(&file),
                message_ids.len(),
                args.path
            ),
            Err(Error::NotFound(_)) => return self.not_found(owner, call, &args.path).await,
            Err(error) => return Err(error),
        };
        Ok(ToolAnswer {
            content,
            files: vec![file],
        })
    }
}

/// The arguments of `tool` as its type, or the words telling the model what was wrong and
/// what the tool expects. `raw` may be the object or a string holding it (OpenAI passes the
/// model's arguments on as a string); absent arguments are an empty object.
fn parse_arguments<T: DeserializeOwned>(tool: Tool, raw: &Value) -> std::result::Result<T, String> {
    let explain = |why: String| {
        format!(
            "Error: the arguments of {} are not valid: {why}. {} takes a JSON object: {}",
            tool.name(),
            tool.name(),
            tool.usage()
        )
    };
    let value = match raw {
        Value::Null => Value::Object(serde_json::Map::new()),
        Value::String(text) if text.trim().is_empty() => Value::Object(serde_json::Map::new()),
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|error| explain(format!("they are not JSON ({error})")))?,
        other => other.clone(),
    };
    if !value.is_object() {
        return Err(explain(format!(
            "they are {}, not an object",
            kind_of(&value)
        )));
    }
    serde_json::from_value(value).map_err(|error| explain(error.to_string()))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether an operation's error is a refusal the model can act on (told as content), rather
/// than a failure of the service (answered as an error). Every variant is named, so that a
/// new one must be placed on one side or the other.
fn is_refusal(error: &Error) -> bool {
    match error {
        Error::NotFound(_)
        | Error::Invalid { .. }
        | Error::TooLarge(_)
        | Error::QuotaExceeded(_)
        | Error::NameTaken(_)
        | Error::Unsupported(_)
        | Error::Busy(_)
        | Error::ConfirmationRequired { .. }
        | Error::NoSuchTool(_) => true,
        Error::Catalog(_) | Error::Blobs(_) | Error::Runtime(_) | Error::Io(_) => false,
    }
}

/// The part of a model's path below `/mnt/data`: `/mnt/data/a.csv`, `sandbox:/mnt/data/a.csv`
/// and `a.csv` all give `a.csv`; another absolute path gives `None`.
fn data_relative(path: &str) -> Option<&str> {
    let path = path.strip_prefix("sandbox:").unwrap_or(path);
    let relative = match path.strip_prefix(SANDBOX_DATA) {
        Some(rest) => rest.strip_prefix('/')?,
        None if path.starts_with('/') => return None,
        None => path.trim_start_matches("./"),
    };
    (!relative.is_empty()).then_some(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_may_be_an_object_or_a_string() {
        let object = serde_json::json!({"path": "a.csv"});
        let parsed: PathArgs = parse_arguments(Tool::ReadFile, &object).expect("object");
        assert_eq!(parsed.path, "a.csv");
        let string = Value::String(r#"{"path": "b.csv"}"#.to_owned());
        let parsed: PathArgs = parse_arguments(Tool::ReadFile, &string).expect("string");
        assert_eq!(parsed.path, "b.csv");
    }

    #[test]
    fn bad_arguments_are_explained() {
        let cases = [
            (Value::String("{not json".into()), "not JSON"),
            (serde_json::json!({}), "missing field `code`"),
            (serde_json::json!({"code": 1}), "invalid type"),
            (
                serde_json::json!({"code": "1", "cwd": "/"}),
                "unknown field `cwd`",
            ),
            (serde_json::json!([1]), "an array, not an object"),
        ];
        for (raw, expected) in cases {
            let explained = parse_arguments::<RunCodeArgs>(Tool::RunCode, &raw)
                .err()
                .unwrap_or_else(|| panic!("{raw} parsed"));
            assert!(explained.contains(expected), "{explained}");
            assert!(
                explained.contains("\"code\": string (required)"),
                "{explained}"
            );
        }
    }

    #[test]
    fn paths_name_files_under_mnt_data() {
        assert_eq!(data_relative("/mnt/data/a.csv"), Some("a.csv"));
        assert_eq!(data_relative("sandbox:/mnt/data/d/a.csv"), Some("d/a.csv"));
        assert_eq!(data_relative("a.csv"), Some("a.csv"));
        assert_eq!(data_relative("./a.csv"), Some("a.csv"));
        assert_eq!(data_relative("/etc/passwd"), None);
        assert_eq!(data_relative("/mnt/database"), None);
        assert_eq!(data_relative("/mnt/data/"), None);
    }
}
