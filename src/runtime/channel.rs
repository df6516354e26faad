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
    /// The interpreter has started and imported what it preloads.
    Ready {},
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
        /// Renderings by MIME type.
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
        /// The traceback's lines.
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
    fn requests_are_length_prefixed_json() {
        let encoded = RunnerRequest::Exec {
            id: 1,
            code: "print(1)",
            init_code: None,
        }
        .encode();
        let length = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]) as usize;
        assert_eq!(length, encoded.len() - 4);
        let body: serde_json::Value = serde_json::from_slice(&encoded[4..]).unwrap();
        assert_eq!(body["op"], "exec");
        assert_eq!(body["code"], "print(1)");
    }
}
