//! The framed protocol between the supervisor and a sandbox's runner (`images/python/runner.py`).
//!
//! The channel is the runner's own standard input and output, attached through the engine:
//! never a socket or a file in a folder the sandbox can write, which the sandbox could swap for
//! a link that the supervisor would then follow on the host. Each frame is a 4-byte big-endian
//! length followed by that many bytes of one JSON object.
//!
//! Everything that comes out of the sandbox is hostile input. A frame longer than
//! [`MAX_FRAME_FROM_RUNNER`] ends the channel (the length could not be trusted to find the
//! next frame), and a frame that does not parse as a [`RunnerFrame`] is dropped. What a frame
//! says can only ever be about the runner's own run: outputs are still found by the
//! supervisor's snapshot of the workspace, never because the runner named a path.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The largest frame the runner may send. It bounds what one hostile frame can make the
/// supervisor hold; a figure is the largest thing a frame carries.
pub const MAX_FRAME_FROM_RUNNER: usize = 8 << 20;

/// What the supervisor asks of the runner.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RunnerRequest<'a> {
    /// Run `code` in the interpreter's namespace; `init_code` first, when given.
    Exec {
        /// Names this execution; every frame about it carries the same id.
        id: u64,
        /// The cell.
        code: &'a str,
        /// Code to run before the cell, in a fresh interpreter.
        init_code: Option<&'a str>,
        /// Whether an exception's traceback stays out of stderr (the `error` output has it).
        quiet_tracebacks: bool,
    },
    /// Import these modules now, ahead of any cell (a sandbox about to wait in the pool).
    Preload {
        /// Module names; missing ones are skipped.
        modules: &'a [String],
    },
}

impl RunnerRequest<'_> {
    /// The request as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }
}

/// Which output stream a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    /// Standard output (fd 1 of the code and of everything it starts).
    Stdout,
    /// Standard error.
    Stderr,
}

/// What the runner says. Nothing here is trusted beyond the run it is about.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum RunnerFrame {
    /// The interpreter has started.
    Ready {},
    /// The interpreter has imported what it was asked to preload.
    Preloaded {},
    /// Output text.
    Stream {
        /// The execution it belongs to; `None` for output between executions.
        id: Option<u64>,
        /// Which stream.
        name: StreamName,
        /// The text.
        text: String,
    },
    /// The value of a cell's last expression, or something the code displayed.
    Result {
        /// The execution.
        id: u64,
        /// Renderings by MIME type, of the kinds codebox shows ([`RESULT_TYPES`]).
        #[serde(deserialize_with = "known_renderings")]
        data: BTreeMap<String, String>,
    },
    /// A figure.
    Image {
        /// The execution.
        id: u64,
        /// The PNG, base64-encoded.
        png: String,
    },
    /// An exception the cell raised.
    Error {
        /// The execution.
        id: u64,
        /// The exception's type name.
        ename: String,
        /// The exception's message.
        evalue: String,
        /// The traceback's lines, at most [`MAX_TRACEBACK_LINES`].
        #[serde(deserialize_with = "capped_lines")]
        traceback: Vec<String>,
    },
    /// The execution finished; the interpreter waits for the next.
    Done {
        /// The execution.
        id: u64,
        /// The status the code would have exited with as a script.
        exit_code: i64,
    },
}

/// The MIME types of a result codebox keeps; other renderings are skipped as they are read.
pub const RESULT_TYPES: [&str; 3] = ["text/plain", "text/html", "text/markdown"];

/// Traceback lines kept of an error; the rest are skipped as they are read.
pub const MAX_TRACEBACK_LINES: usize = 1000;

/// Reads a map of renderings keeping only [`RESULT_TYPES`]: a hostile frame of millions of
/// tiny entries must not become millions of allocations.
fn known_renderings<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Renderings;
    impl<'de> serde::de::Visitor<'de> for Renderings {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a map of MIME types to text")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(kind) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if RESULT_TYPES.contains(&kind.as_ref()) {
                    kept.insert(kind.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(kept)
        }
    }
    deserializer.deserialize_map(Renderings)
}

/// Reads a list of lines keeping the first [`MAX_TRACEBACK_LINES`].
fn capped_lines<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct Lines;
    impl<'de> serde::de::Visitor<'de> for Lines {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a list of lines")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            while kept.len() < MAX_TRACEBACK_LINES {
                match seq.next_element::<String>()? {
                    Some(line) => kept.push(line),
                    None => return Ok(kept),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(kept)
        }
    }
    deserializer.deserialize_seq(Lines)
}

/// Why the channel cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The runner announced a frame past the cap.
    #[error("the runner sent a frame of {0} bytes, more than the {MAX_FRAME_FROM_RUNNER} allowed")]
    TooLarge(usize),
}

/// Cuts the runner's output stream into frames, whatever pieces it arrives in.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Adds bytes read from the channel.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame's body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if length > MAX_FRAME_FROM_RUNNER {
            return Err(FrameError::TooLarge(length));
        }
        if self.buffer.len() < 4 + length {
            // Room for the rest now, so that a large frame arriving in small pieces is not
            // copied over and over.
            self.buffer.reserve(4 + length - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

/// Parses a frame's body; `None` for anything that is not a frame this supervisor knows.
pub fn parse(body: &[u8]) -> Option<RunnerFrame> {
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Vec<u8> {
        let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes
    }

    #[test]
    fn frames_arrive_whole_whatever_the_pieces() {
        let mut stream = frame(r#"{"t":"ready","pid":7}"#);
        stream.extend(frame(r#"{"t":"done","id":3,"status":"ok","exit_code":0}"#));
        for piece in [1, 3, 7, stream.len()] {
            let mut decoder = FrameDecoder::default();
            let mut frames = Vec::new();
            for chunk in stream.chunks(piece) {
                decoder.push(chunk);
                while let Some(body) = decoder.next_frame().unwrap() {
                    frames.push(parse(&body).unwrap());
                }
            }
            assert_eq!(
                frames,
                vec![
                    RunnerFrame::Ready {},
                    RunnerFrame::Done {
                        id: 3,
                        exit_code: 0
                    }
                ]
            );
        }
    }

    #[test]
    fn an_oversized_frame_ends_the_channel() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn frames_that_do_not_parse_are_dropped() {
        for body in [
            "",
            "[]",
            r#"{"t":"exec"}"#,
            r#"{"t":"stream","id":1,"name":"stdin","text":"x"}"#,
            r#"{"t":"done","id":-1,"exit_code":0}"#,
            r#"{"t":"result","id":1,"data":{"text/plain":{"nested":1}}}"#,
        ] {
            assert_eq!(parse(body.as_bytes()), None, "{body}");
        }
    }

    #[test]
    fn hostile_results_and_tracebacks_are_cut_as_they_are_read() {
        let mut data = String::from(r#"{"t":"result","id":1,"data":{"text/plain":"42""#);
        for key in 0..10_000 {
            data.push_str(&format!(r#","x-{key}":"""#));
        }
        data.push_str("}}");
        let Some(RunnerFrame::Result { data, .. }) = parse(data.as_bytes()) else {
            panic!("a result");
        };
        assert_eq!(data.len(), 1);
        let lines = vec!["\"\""; 50_000].join(",");
        let error =
            format!(r#"{{"t":"error","id":1,"ename":"E","evalue":"v","traceback":[{lines}]}}"#);
        let Some(RunnerFrame::Error { traceback, .. }) = parse(error.as_bytes()) else {
            panic!("an error");
        };
        assert_eq!(traceback.len(), MAX_TRACEBACK_LINES);
    }

    #[test]
    fn requests_are_length_prefixed_json() {
        let encoded = RunnerRequest::Exec {
            id: 1,
            code: "print(1)",
            init_code: None,
            quiet_tracebacks: false,
        }
        .encode();
        let length = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]) as usize;
        assert_eq!(length, encoded.len() - 4);
        let body: serde_json::Value = serde_json::from_slice(&encoded[4..]).unwrap();
        assert_eq!(body["op"], "exec");
        assert_eq!(body["code"], "print(1)");
    }
}
