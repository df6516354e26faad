//! What the cases run: the two programs (`print(1)` and the pandas report) and the CSV the
//! pandas report reads, generated the same on every run.

/// The smallest program: its time is the fixed cost of a run.
pub(crate) const PRINT_CODE: &str = "print(1)";
/// A typical report: read an attachment with pandas, write a spreadsheet. The same bytes run
/// in codebox, in `docker run` and in AutoGen.
pub(crate) const PANDAS_CODE: &str = "import pandas as pd; df = pd.read_csv('/mnt/data/data.csv'); \
     df.describe().to_excel('/mnt/data/report.xlsx')";
/// The rows of the generated CSV.
pub(crate) const CSV_ROWS: usize = 10_000;

/// A CSV of `rows` rows of mixed columns, the same on every run (a fixed linear congruential
/// sequence stands in for random data).
pub(crate) fn generate_csv(rows: usize) -> String {
    pub(crate) const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut csv = String::from("id,region,units,price,discount\n");
    for id in 0..rows {
        let region = REGIONS[(next() % 4) as usize];
        let units = next() % 500 + 1;
        let price = (next() % 100_000) as f64 / 100.0;
        let discount = (next() % 30) as f64 / 100.0;
        csv.push_str(&format!("{id},{region},{units},{price:.2},{discount:.2}\n"));
    }
    csv
}
