//! How a result is printed: a table (the first rows, the rest counted), or every row as CSV with
//! a header, as one JSON array, or as one JSON object per line. CSV and JSON stream: rows are
//! written as they arrive and none are kept.

use crate::error::{Error, Result};
use arrow::array::AsArray;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use std::io::Write;

/// A result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A table of the first rows (`max_rows`), then the row count.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// Every format, by name.
    pub const ALL: [(&'static str, Format); 4] =
        [("table", Format::Table), ("csv", Format::Csv), ("json", Format::Json), ("ndjson", Format::Ndjson)];
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        Format::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)).map(|(_, f)| *f).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|(n, _)| *n).collect();
            Error::Command(format!("unknown format {s:?} (one of {})", names.join(", ")))
        })
    }
}

/// Writes `stream` to `out` as `format` (`max_rows` bounds a table; `None`: every row, printed
/// as it arrives). Returns the rows.
pub async fn write(
    stream: SendableRecordBatchStream,
    format: Format,
    max_rows: Option<usize>,
    out: &mut dyn Write,
) -> Result<u64> {
    let io = |e: std::io::Error| Error::io("<stdout>", e);
    match format {
        Format::Table if is_plan(&stream.schema()) => write_plans(stream, out).await,
        Format::Table => Ok(spillway_engine::output::print_table(stream, max_rows, out).await?),
        Format::Csv => {
            let schema = stream.schema();
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(out);
            let mut batches = 0;
            let rows = drain(stream, |b| {
                batches += 1;
                writer.write(b)
            })
            .await?;
            if batches == 0 {
                // The header of an empty result.
                writer.write(&arrow::array::RecordBatch::new_empty(schema))?;
            }
            Ok(rows)
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            let rows = drain(stream, |b| writer.write(b)).await?;
            // `[]` for an empty result too.
            writer.finish()?;
            drop(writer);
            writeln!(out).map_err(io)?;
            Ok(rows)
        }
        Format::Ndjson => {
            let mut writer = arrow::json::LineDelimitedWriter::new(out);
            let rows = drain(stream, |b| writer.write(b)).await?;
            writer.finish()?;
            Ok(rows)
        }
    }
}

/// Whether `schema` is `EXPLAIN`'s: `plan_type` and `plan`.
fn is_plan(schema: &arrow::datatypes::Schema) -> bool {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names == ["plan_type", "plan"]
}

/// `EXPLAIN` as text, each plan under its type, the way its lines are indented (a table would
/// make every line as wide as the widest).
async fn write_plans(stream: SendableRecordBatchStream, out: &mut dyn Write) -> Result<u64> {
    let io = |e: std::io::Error| Error::io("<stdout>", e);
    let mut rows = 0u64;
    let mut stream = stream;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        let text = |i: usize| arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8);
        let (types, plans) = (text(0)?, text(1)?);
        let (types, plans) = (types.as_string::<i32>(), plans.as_string::<i32>());
        for row in 0..batch.num_rows() {
            writeln!(out, "{}:\n{}", types.value(row), plans.value(row).trim_end()).map_err(io)?;
        }
    }
    Ok(rows)
}

/// Reads `stream` to its end, handing each batch to `write`; returns the rows.
pub(crate) async fn drain(
    mut stream: SendableRecordBatchStream,
    mut write: impl FnMut(&arrow::array::RecordBatch) -> std::result::Result<(), arrow::error::ArrowError>,
) -> Result<u64> {
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        write(&batch)?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn render(sql: &str, format: Format) -> String {
        let ctx = SessionContext::new();
        let stream = ctx.sql(sql).await.unwrap().execute_stream().await.unwrap();
        let mut out = Vec::new();
        write(stream, format, Some(10), &mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn every_format() {
        let sql = "SELECT * FROM (VALUES (1, 'a'), (2, NULL)) AS t(n, s) ORDER BY n";
        assert_eq!(render(sql, Format::Csv).await, "n,s\n1,a\n2,\n");
        assert_eq!(render(sql, Format::Json).await, "[{\"n\":1,\"s\":\"a\"},{\"n\":2}]\n");
        assert_eq!(render(sql, Format::Ndjson).await, "{\"n\":1,\"s\":\"a\"}\n{\"n\":2}\n");
        let table = render(sql, Format::Table).await;
        assert!(table.contains("| 1 | a |") && table.ends_with("2 rows\n"), "{table}");
        let empty = "SELECT 1 AS n WHERE false";
        assert_eq!(render(empty, Format::Json).await, "[]\n");
        assert_eq!(render(empty, Format::Ndjson).await, "");
        assert_eq!(render(empty, Format::Csv).await, "n\n");
        assert_eq!("NDJSON".parse::<Format>().unwrap(), Format::Ndjson);
        assert!("xml".parse::<Format>().is_err());
        // EXPLAIN's plan is printed as its indented text, not as a table.
        let plan = render("EXPLAIN SELECT n FROM (VALUES (1)) AS t(n)", Format::Table).await;
        assert!(
            plan.starts_with("logical_plan:\n") && plan.contains("\nphysical_plan:\n") && !plan.contains('|'),
            "{plan}"
        );
    }
}
