//! An xlsx workbook as CSV text: every sheet, introduced by a `# sheet: <name>` line, or the
//! first rows of the first sheet as a preview.
//!
//! A workbook is a zip archive, so a small file can claim gigabytes once unzipped: the
//! archive's declared sizes are checked first (the zip reader then refuses any entry that
//! inflates past what it declared), and cells are read one at a time with calamine's cell
//! reader, never as a dense grid (a sheet with one cell at `A1` and one at `XFD1048576`
//! would otherwise allocate billions of cells). The cells visited, the sheets and the text
//! written are capped.

use std::io::Cursor;

use calamine::{Data, Reader, Xlsx, XlsxError};

use super::{Bounded, ExtractError, Extracted};

/// The most entries a workbook's archive may have.
const MAX_ENTRIES: usize = 10_000;
/// The most bytes a workbook's archive may declare once unzipped, all entries together.
const MAX_UNZIPPED_BYTES: u64 = 256 * 1024 * 1024;
/// The most cells read from one workbook, empty ones included.
const MAX_CELLS: usize = 2_000_000;
/// The most sheets read from one workbook.
const MAX_SHEETS: usize = 256;

/// Every sheet of the xlsx workbook in `bytes` as CSV, at most `max_bytes` of it.
pub fn sheets_as_csv(bytes: &[u8], max_bytes: usize) -> Result<Extracted, ExtractError> {
    let mut book = open(bytes)?;
    let names = book.sheet_names();
    let mut out = Bounded::new(max_bytes);
    let mut cells = MAX_CELLS;
    for name in names.iter().take(MAX_SHEETS) {
        if !out.push(&format!("# sheet: {name}\n")) {
            break;
        }
        write_rows(&mut book, name, &mut out, &mut cells, usize::MAX)?;
        if out.is_truncated() {
            break;
        }
    }
    if names.len() > MAX_SHEETS {
        out.cut();
    }
    Ok(out.finish())
}

/// The first `rows` rows (header included) of the workbook's first sheet as CSV, at most
/// `max_bytes` of it; empty text for a workbook without sheets.
pub fn sheet_preview(
    bytes: &[u8],
    rows: usize,
    max_bytes: usize,
) -> Result<Extracted, ExtractError> {
    let mut book = open(bytes)?;
    let mut out = Bounded::new(max_bytes);
    if let Some(first) = book.sheet_names().first() {
        let mut cells = MAX_CELLS;
        write_rows(&mut book, first, &mut out, &mut cells, rows)?;
    }
    Ok(out.finish())
}

/// The workbook in `bytes`, once its archive passed the size checks.
fn open(bytes: &[u8]) -> Result<Xlsx<Cursor<&[u8]>>, ExtractError> {
    check_archive(bytes)?;
    Xlsx::new(Cursor::new(bytes)).map_err(unreadable)
}

/// Refuses an archive with too many entries or too many bytes once unzipped, by what its
/// central directory declares (which the zip reader holds every entry to).
fn check_archive(bytes: &[u8]) -> Result<(), ExtractError> {
    let not_a_workbook = |error: zip::result::ZipError| {
        ExtractError(format!("not an xlsx workbook that can be read: {error}"))
    };
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(not_a_workbook)?;
    if archive.len() > MAX_ENTRIES {
        return Err(ExtractError(format!(
            "the workbook has more than {MAX_ENTRIES} parts"
        )));
    }
    let mut unzipped: u64 = 0;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(not_a_workbook)?;
        unzipped = unzipped.saturating_add(entry.size());
    }
    if unzipped > MAX_UNZIPPED_BYTES {
        return Err(ExtractError(format!(
            "the workbook is larger than {} MiB unzipped",
            MAX_UNZIPPED_BYTES >> 20
        )));
    }
    Ok(())
}

/// Writes the rows of sheet `name` as CSV lines into `out`, at most `rows` of them and at
/// most `cells` cells read (which it counts down). Empty rows are skipped; missing cells
/// within a row are empty fields.
fn write_rows(
    book: &mut Xlsx<Cursor<&[u8]>>,
    name: &str,
    out: &mut Bounded,
    cells: &mut usize,
    rows: usize,
) -> Result<(), ExtractError> {
    let mut reader = book.worksheet_cells_reader(name).map_err(unreadable)?;
    // The row being written and how many columns of it are written.
    let mut current: Option<(u32, u32)> = None;
    let mut written = 0;
    while let Some(cell) = reader.next_cell().map_err(unreadable)? {
        if *cells == 0 {
            out.cut();
            return Ok(());
        }
        *cells -= 1;
        let value = Data::from(cell.get_value().clone());
        if value == Data::Empty {
            continue;
        }
        let (row, column) = cell.get_position();
        let used = match current {
            Some((current_row, used)) if current_row == row => used,
            _ => {
                if current.is_some() && !out.push("\n") {
                    return Ok(());
                }
                if written == rows {
                    out.cut();
                    return Ok(());
                }
                written += 1;
                0
            }
        };
        // A cell listed out of order (a malformed sheet) goes after the columns written.
        let target = column.max(used);
        let separators = if used == 0 { target } else { target - used + 1 };
        // One separator per column: never more than the text may hold, since `push` stops
        // at the cap.
        for _ in 0..separators {
            if !out.push(",") {
                return Ok(());
            }
        }
        if !out.push(&csv_field(&value.to_string())) {
            return Ok(());
        }
        current = Some((row, target.saturating_add(1)));
    }
    if current.is_some() {
        out.push("\n");
    }
    Ok(())
}

/// A CSV field: quoted when it holds a separator, a quote or a line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn unreadable(error: XlsxError) -> ExtractError {
    ExtractError(format!("not an xlsx workbook that can be read: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_when_they_must_be() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    /// A workbook of one sheet whose `<sheetData>` is `cells`, zipped without compression.
    fn workbook(cells: &str) -> Vec<u8> {
        use std::io::Write;
        let parts = [
            (
                "[Content_Types].xml",
                r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>"#.to_owned(),
            ),
            (
                "_rels/.rels",
                r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#.to_owned(),
            ),
            (
                "xl/workbook.xml",
                r#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Data" sheetId="1" r:id="rId1"/></sheets></workbook>"#.to_owned(),
            ),
            (
                "xl/_rels/workbook.xml.rels",
                r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>"#.to_owned(),
            ),
            (
                "xl/worksheets/sheet1.xml",
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{cells}</sheetData></worksheet>"#
                ),
            ),
        ];
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, text) in parts {
            zip.start_file(name, options).expect("start a part");
            zip.write_all(text.as_bytes()).expect("write a part");
        }
        zip.finish().expect("finish the archive").into_inner()
    }

    #[test]
    fn sheets_read_as_csv_with_gaps_and_quotes() {
        let book = workbook(
            r#"<row r="1"><c r="A1" t="inlineStr"><is><t>name</t></is></c><c r="C1"><v>2</v></c></row><row r="3"><c r="B3" t="inlineStr"><is><t>a,b</t></is></c></row>"#,
        );
        let text = sheets_as_csv(&book, 1000).expect("a workbook");
        assert_eq!(text.text, "# sheet: Data\nname,,2\n,\"a,b\"\n");
        assert!(!text.truncated);
        let preview = sheet_preview(&book, 1, 1000).expect("a workbook");
        assert_eq!(
            (preview.text.as_str(), preview.truncated),
            ("name,,2\n", true)
        );
    }

    #[test]
    fn a_far_away_cell_costs_no_more_than_the_text_asked_for() {
        // Dense, this sheet would be 2^34 cells; read cell by cell, it is two.
        let book = workbook(
            r#"<row r="1"><c r="A1"><v>1</v></c></row><row r="1048576"><c r="XFD1048576"><v>2</v></c></row>"#,
        );
        let text = sheets_as_csv(&book, 64).expect("a workbook");
        assert!(text.truncated);
        assert!(text.text.len() <= 64);
        assert!(text.text.starts_with("# sheet: Data\n1\n,,,"), "{text:?}");
    }

    #[test]
    fn what_is_not_a_workbook_is_refused() {
        assert!(sheets_as_csv(b"region,units\n", 100).is_err());
        assert!(sheet_preview(b"", 5, 100).is_err());
    }
}
