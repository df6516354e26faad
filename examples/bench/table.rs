//! The summary table: its rows, its printing with columns as wide as their widest cell, and
//! the formatting of its cells.

/// One row of the summary table.
pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) p50: String,
    pub(crate) p99: String,
    pub(crate) throughput: String,
    pub(crate) errors: String,
    pub(crate) rss: String,
    pub(crate) baseline: String,
    pub(crate) ratio: String,
    pub(crate) target: String,
    pub(crate) met: String,
}

impl Row {
    const HEADER: [&'static str; 10] = [
        "case",
        "p50",
        "p99",
        "throughput",
        "errors",
        "server RSS",
        "baseline",
        "ratio",
        "target",
        "met",
    ];

    /// A row with only a case name; the other cells say "-".
    pub(crate) fn named(case: impl Into<String>) -> Self {
        let dash = || "-".to_owned();
        Self {
            case: case.into(),
            p50: dash(),
            p99: dash(),
            throughput: dash(),
            errors: dash(),
            rss: dash(),
            baseline: dash(),
            ratio: dash(),
            target: dash(),
            met: dash(),
        }
    }

    fn cells(&self) -> [&str; 10] {
        [
            &self.case,
            &self.p50,
            &self.p99,
            &self.throughput,
            &self.errors,
            &self.rss,
            &self.baseline,
            &self.ratio,
            &self.target,
            &self.met,
        ]
    }
}

/// Prints `rows` as a table whose columns are as wide as their widest cell.
pub(crate) fn print_table(rows: &[Row]) {
    let mut widths = Row::HEADER.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.cells()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 10]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(Row::HEADER);
    for row in rows {
        line(row.cells());
    }
}

/// "12.3 ms", or "-" when there is no sample.
pub(crate) fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{value:.1} ms")
    }
}

pub(crate) fn yes_no(met: bool) -> String {
    if met { "yes" } else { "no" }.to_owned()
}

/// "1 client", "4 clients".
pub(crate) fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
