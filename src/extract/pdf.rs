//! A PDF's text, page by page, with lopdf (pure Rust).
//!
//! PDF streams are compressed, so a small file can claim gigabytes once inflated: every
//! stream is decoded under a cap (lopdf's `max_decompressed_size`, at load and for each
//! page's content), the pages read are capped, and reading stops as soon as the text asked
//! for is full. A file lopdf cannot parse, or an encrypted one, is refused with a reason.

use lopdf::{Document, LoadOptions};

use super::{Bounded, ExtractError, Extracted};

/// The most bytes one stream of the PDF may inflate to.
const MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;
/// The most pages read.
const MAX_PAGES: usize = 2_000;

/// The text of the PDF in `bytes`, page after page, at most `max_bytes` of it.
pub fn pdf_text(bytes: &[u8], max_bytes: usize) -> Result<Extracted, ExtractError> {
    let options = LoadOptions::with_max_decompressed_size(MAX_STREAM_BYTES);
    let document = Document::load_mem_with_options(bytes, options)
        .map_err(|error| ExtractError(format!("not a PDF that can be read: {error}")))?;
    if document.is_encrypted() {
        return Err(ExtractError(
            "the PDF is encrypted; its text cannot be read".to_owned(),
        ));
    }
    let pages = document.get_pages();
    let mut out = Bounded::new(max_bytes);
    for &number in pages.keys().take(MAX_PAGES) {
        // A page whose text cannot be read is skipped: the others may still say something.
        let Ok(text) = document.extract_text_with_limit(&[number], MAX_STREAM_BYTES) else {
            continue;
        };
        if !out.push(&text) {
            break;
        }
    }
    if pages.len() > MAX_PAGES {
        out.cut();
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_pdf_is_refused() {
        let error = pdf_text(b"%PDF-1.4 nothing else", 100).expect_err("not a PDF");
        assert!(error.0.contains("not a PDF"), "{error}");
        assert!(pdf_text(b"hello", 100).is_err());
    }
}
