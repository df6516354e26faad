//! Text a model can read, pulled out of a file's bytes: plain text decoded as UTF-8, an
//! xlsx workbook's sheets as CSV, a PDF's text, and the first rows of a table as a preview.
//!
//! A part beside `translate`: pure functions over bytes already in memory, unaware of where
//! they came from. The supervisor reads the bytes (capped) and runs these parsers off the
//! async threads under a deadline. Everything parsed here is hostile input, so every output
//! is bounded ([`Bounded`]) and every parser has its own caps on what it decompresses and
//! visits (see `sheets.rs` and `pdf.rs`).

mod pdf;
mod sheets;

pub use pdf::pdf_text;
pub use sheets::{sheet_preview, sheets_as_csv};

/// How a file's text is reached, judged by its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text already (csv, json, Python, ...): decoded as UTF-8.
    Text,
    /// An xlsx workbook: its sheets as CSV.
    Spreadsheet,
    /// A PDF: the text of its pages.
    Pdf,
}

impl Format {
    /// The format of a file named `name`, or `None` for a type that has no text view.
    pub fn of(name: &str) -> Option<Self> {
        let (_, extension) = name.rsplit_once('.')?;
        match extension.to_ascii_lowercase().as_str() {
            "csv" | "tsv" | "txt" | "md" | "json" | "jsonl" | "xml" | "yaml" | "yml" | "py"
            | "log" => Some(Self::Text),
            "xlsx" | "xlsm" => Some(Self::Spreadsheet),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    /// Whether a file of this name is a table whose first rows make a preview.
    pub fn is_table(name: &str) -> bool {
        name.rsplit_once('.').is_some_and(|(_, extension)| {
            ["csv", "tsv", "xlsx", "xlsm"]
                .iter()
                .any(|table| table.eq_ignore_ascii_case(extension))
        })
    }
}

/// Text pulled out of a file, and whether some was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The text, at most the bytes asked for.
    pub text: String,
    /// Whether the file has more text than `text` holds.
    pub truncated: bool,
}

/// Why a file's text could not be extracted, in words a user can act on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExtractError(pub String);

/// Text that grows up to a cap of bytes and never past it: the last piece that does not fit
/// is cut on a character boundary, and the text is marked truncated.
#[derive(Debug)]
pub struct Bounded {
    text: String,
    max_bytes: usize,
    truncated: bool,
}

impl Bounded {
    /// Empty text that may grow to `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            text: String::new(),
            max_bytes,
            truncated: false,
        }
    }

    /// Appends as much of `piece` as fits; `false` once the cap is reached and something
    /// was left out, after which nothing more is taken.
    pub fn push(&mut self, piece: &str) -> bool {
        if self.truncated {
            return false;
        }
        let room = self.max_bytes - self.text.len();
        if piece.len() <= room {
            self.text.push_str(piece);
            return true;
        }
        self.text
            .push_str(&piece[..floor_char_boundary(piece, room)]);
        self.truncated = true;
        false
    }

    /// Marks the text as missing something that was not even looked at (a cap on rows,
    /// cells or pages stopped the reading).
    pub fn cut(&mut self) {
        self.truncated = true;
    }

    /// Whether something was left out.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The text and whether something was left out.
    pub fn finish(self) -> Extracted {
        Extracted {
            text: self.text,
            truncated: self.truncated,
        }
    }
}

/// The largest index at most `at` that is a character boundary of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The first bytes of a text file as UTF-8 (invalid bytes replaced), at most `max_bytes` of
/// it. `more` says the file goes on past `bytes`: the text is then truncated, and a
/// character cut in half at the end of `bytes` is dropped rather than replaced.
pub fn decode_text(bytes: &[u8], max_bytes: usize, more: bool) -> Extracted {
    let bytes = if more {
        without_partial_char(bytes)
    } else {
        bytes
    };
    let mut text = Bounded::new(max_bytes);
    text.push(&String::from_utf8_lossy(bytes));
    if more {
        text.cut();
    }
    text.finish()
}

/// `bytes` without a UTF-8 sequence that its end cut short.
fn without_partial_char(bytes: &[u8]) -> &[u8] {
    // The last lead byte is at most three bytes from the end of a valid sequence.
    let lead = (bytes.len().saturating_sub(4)..bytes.len())
        .rev()
        .find(|&at| bytes[at] & 0b1100_0000 != 0b1000_0000);
    let Some(lead) = lead else {
        return bytes;
    };
    let expected = match bytes[lead] {
        byte if byte >= 0b1111_0000 => 4,
        byte if byte >= 0b1110_0000 => 3,
        byte if byte >= 0b1100_0000 => 2,
        _ => 1,
    };
    if bytes.len() - lead < expected {
        &bytes[..lead]
    } else {
        bytes
    }
}

/// The first `rows` lines of a delimited text (its header and first rows), each cut to a
/// sane length, at most `max_bytes` in all.
pub fn first_lines(text: &str, rows: usize, max_bytes: usize) -> Extracted {
    const MAX_LINE_BYTES: usize = 1024;
    let mut preview = Bounded::new(max_bytes);
    for (index, line) in text.lines().enumerate() {
        if index == rows {
            preview.cut();
            break;
        }
        let line = line.trim_end_matches('\r');
        let cut = &line[..floor_char_boundary(line, MAX_LINE_BYTES)];
        if !preview.push(cut) || !preview.push("\n") {
            break;
        }
    }
    preview.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::of("a.CSV"), Some(Format::Text));
        assert_eq!(Format::of("book.xlsx"), Some(Format::Spreadsheet));
        assert_eq!(Format::of("paper.pdf"), Some(Format::Pdf));
        assert_eq!(Format::of("image.png"), None);
        assert_eq!(Format::of("csv"), None);
        assert!(Format::is_table("a.tsv") && !Format::is_table("a.txt"));
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        let text = "aé€😀".as_bytes();
        for max in 0..=text.len() {
            let cut = decode_text(text, max, false);
            assert!(cut.text.len() <= max, "{max}: {cut:?}");
            assert_eq!(cut.truncated, max < text.len(), "{max}");
            assert!("aé€😀".starts_with(&cut.text));
        }
    }

    #[test]
    fn invalid_bytes_are_replaced_and_a_cut_character_dropped() {
        assert_eq!(decode_text(b"a\xffb", 100, false).text, "a\u{fffd}b");
        // The file goes on: the half of `é` at the end of the read is not a replacement.
        let cut = decode_text(&"aé".as_bytes()[..2], 100, true);
        assert_eq!(cut.text, "a");
        assert!(cut.truncated);
        assert_eq!(decode_text("aé".as_bytes(), 100, true).text, "aé");
    }

    #[test]
    fn first_lines_stop_at_the_rows_asked_for() {
        let preview = first_lines("h1,h2\r\n1,2\n3,4\n", 2, 100);
        assert_eq!(preview.text, "h1,h2\n1,2\n");
        assert!(preview.truncated);
        let whole = first_lines("h\n1\n", 5, 100);
        assert_eq!((whole.text.as_str(), whole.truncated), ("h\n1\n", false));
        assert!(first_lines(&"x".repeat(5000), 5, 100).text.len() <= 100);
    }
}
