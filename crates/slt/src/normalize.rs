//! Query results as sqllogictest text, exactly as DataFusion's own runner writes them.
//!
//! Adapted from `datafusion-sqllogictest` 55.2.0 (`src/engines/conversion.rs` and
//! `src/engines/datafusion_engine/normalize.rs`, Apache License 2.0, (c) The Apache Software
//! Foundation). Copied rather than depended on: that crate pulls `datafusion-spark`,
//! `datafusion-substrait` and DataFusion's `avro` feature into the build (docs/sqllogictest.md).
//! Path normalisation (`WORKSPACE_ROOT`) is left out: it only concerns `EXPLAIN` output, which
//! this runner does not compare.

use crate::{DFColumnType, Result, SltError};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DecimalType;
use arrow::datatypes::{Decimal128Type, Decimal256Type, Decimal32Type, Decimal64Type, Fields, Schema};
use arrow::util::display::ArrayFormatter;
use arrow::{array, array::ArrayRef, datatypes::DataType, record_batch::RecordBatch};
use bigdecimal::BigDecimal;
use datafusion::common::internal_datafusion_err;
use datafusion::config::ConfigField;
use std::str::FromStr;

/// Converts `batches` to a result as expected by sqllogictest.
pub fn convert_batches(schema: &Schema, batches: Vec<RecordBatch>, is_spark_path: bool) -> Result<Vec<Vec<String>>> {
    let mut rows = vec![];
    for batch in batches {
        // Verify schema
        if !schema.contains(&batch.schema()) {
            return Err(SltError::DataFusion(internal_datafusion_err!(
                "Schema mismatch. Previously had\n{:#?}\n\nGot:\n{:#?}",
                &schema,
                batch.schema()
            )));
        }

        // Convert a single batch to a `Vec<Vec<String>>` for comparison, flatten expanded rows, and normalize each.
        let new_rows = (0..batch.num_rows())
            .map(|row| {
                batch
                    .columns()
                    .iter()
                    .map(|col| cell_to_string(col, row, is_spark_path))
                    .collect::<Result<Vec<String>>>()
            })
            .collect::<Result<Vec<Vec<String>>>>()?
            .into_iter()
            .flat_map(expand_row);
        rows.extend(new_rows);
    }
    Ok(rows)
}

/// special case rows that have newlines in them (like explain plans)
//
/// Transform inputs like:
/// ```text
/// [
///   "logical_plan",
///   "Sort: d.b ASC NULLS LAST\n  Projection: d.b, MAX(d.a) AS max_a",
/// ]
/// ```
///
/// Into one cell per line, adding lines if necessary
/// ```text
/// [
///   "logical_plan",
/// ]
/// [
///   "Sort: d.b ASC NULLS LAST",
/// ]
/// [ <--- newly added row
///   "|-- Projection: d.b, MAX(d.a) AS max_a",
/// ]
/// ```
fn expand_row(mut row: Vec<String>) -> impl Iterator<Item = Vec<String>> {
    use itertools::Either;
    use std::iter::once;

    // check last cell
    if let Some(cell) = row.pop() {
        let lines: Vec<_> = cell.split('\n').collect();

        // no newlines in last cell
        if lines.len() < 2 {
            row.push(cell);
            return Either::Left(once(row));
        }

        // form new rows with each additional line
        let new_lines: Vec<_> = lines
            .into_iter()
            .enumerate()
            .map(|(idx, l)| {
                // replace any leading spaces with '-' as
                // `sqllogictest` ignores whitespace differences
                //
                // See https://github.com/apache/datafusion/issues/6328
                let content = l.trim_start();
                let new_prefix = "-".repeat(l.len() - content.len());
                // maintain for each line a number, so
                // reviewing explain result changes is easier
                let line_num = idx + 1;
                vec![format!("{line_num:02}){new_prefix}{content}")]
            })
            .collect();

        Either::Right(once(row).chain(new_lines))
    } else {
        Either::Left(once(row))
    }
}

macro_rules! get_row_value {
    ($array_type:ty, $column: ident, $row: ident) => {{
        let array = $column.as_any().downcast_ref::<$array_type>().unwrap();

        array.value($row)
    }};
}

/// Normalizes the content of a single cell in RecordBatch prior to printing.
///
/// This is to make the output comparable to the semi-standard .slt format
///
/// Normalizations applied to [NULL Values and empty strings]
///
/// [NULL Values and empty strings]: https://duckdb.org/dev/sqllogictest/result_verification#null-values-and-empty-strings
///
/// Floating numbers are rounded to have a consistent representation with the Postgres runner.
fn cell_to_string(col: &ArrayRef, row: usize, is_spark_path: bool) -> Result<String> {
    if col.is_null(row) {
        // represent any null value with the string "NULL"
        Ok(NULL_STR.to_string())
    } else {
        match col.data_type() {
            DataType::Null => Ok(NULL_STR.to_string()),
            DataType::Boolean => Ok(bool_to_str(get_row_value!(array::BooleanArray, col, row))),
            DataType::Float16 => Ok(float_to_str(get_row_value!(array::Float16Array, col, row), None)),
            DataType::Float32 => Ok(float_to_str(get_row_value!(array::Float32Array, col, row), None)),
            DataType::Float64 => {
                let result = get_row_value!(array::Float64Array, col, row);
                if is_spark_path {
                    Ok(float_to_str(result, Some(15)))
                } else {
                    Ok(float_to_str(result, None))
                }
            }
            DataType::Decimal32(_, scale) => {
                let value = get_row_value!(array::Decimal32Array, col, row);
                Ok(arrow_decimal_to_str::<Decimal32Type>(value, *scale))
            }
            DataType::Decimal64(_, scale) => {
                let value = get_row_value!(array::Decimal64Array, col, row);
                Ok(arrow_decimal_to_str::<Decimal64Type>(value, *scale))
            }
            DataType::Decimal128(_, scale) => {
                let value = get_row_value!(array::Decimal128Array, col, row);
                Ok(arrow_decimal_to_str::<Decimal128Type>(value, *scale))
            }
            DataType::Decimal256(_, scale) => {
                let value = get_row_value!(array::Decimal256Array, col, row);
                Ok(arrow_decimal_to_str::<Decimal256Type>(value, *scale))
            }
            DataType::LargeUtf8 => Ok(varchar_to_str(get_row_value!(array::LargeStringArray, col, row))),
            DataType::Utf8 => Ok(varchar_to_str(get_row_value!(array::StringArray, col, row))),
            DataType::Utf8View => Ok(varchar_to_str(get_row_value!(array::StringViewArray, col, row))),
            DataType::Dictionary(_, _) => {
                let dict = col.as_any_dictionary();
                let key = dict.normalized_keys()[row];
                Ok(cell_to_string(dict.values(), key, is_spark_path)?)
            }
            _ => {
                let mut datafusion_format_options = datafusion::config::FormatOptions::default();

                datafusion_format_options.set("null", "NULL").unwrap();

                let arrow_format_options: arrow::util::display::FormatOptions =
                    (&datafusion_format_options).try_into().unwrap();

                let f = ArrayFormatter::try_new(col.as_ref(), &arrow_format_options)?;

                Ok(f.value(row).to_string())
            }
        }
        .map_err(SltError::Arrow)
    }
}

/// Converts columns to a result as expected by sqllogictest.
pub fn convert_schema_to_types(columns: &Fields) -> Vec<DFColumnType> {
    columns
        .iter()
        .map(|f| f.data_type())
        .map(|data_type| match data_type {
            DataType::Boolean => DFColumnType::Boolean,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => DFColumnType::Integer,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => DFColumnType::Float,
            DataType::Decimal32(_, _)
            | DataType::Decimal64(_, _)
            | DataType::Decimal128(_, _)
            | DataType::Decimal256(_, _) => DFColumnType::Float,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DFColumnType::Text,
            DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => DFColumnType::DateTime,
            DataType::Timestamp(_, _) => DFColumnType::Timestamp,
            DataType::Dictionary(key_type, value_type) => {
                if key_type.is_integer() {
                    // mapping dictionary string types to Text
                    match value_type.as_ref() {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DFColumnType::Text,
                        _ => DFColumnType::Another,
                    }
                } else {
                    DFColumnType::Another
                }
            }
            _ => DFColumnType::Another,
        })
        .collect()
}

/// Represents a constant for NULL string in your database.
const NULL_STR: &str = "NULL";

fn bool_to_str(value: bool) -> String {
    if value {
        "true".to_string()
    } else {
        "false".to_string()
    }
}

fn varchar_to_str(value: &str) -> String {
    if value.is_empty() {
        "(empty)".to_string()
    } else {
        // Escape nulls so that github renders them correctly in the webui
        value.trim_end_matches('\n').replace("\u{0000}", "\\0")
    }
}

/// A float as DataFusion's runner prints it: NaN without its sign (which differs by platform),
/// infinities by name, other values from the type's shortest text, rounded to `digits` decimals
/// (12 unless given).
fn float_to_str<F: Copy + std::fmt::Display + Into<f64>>(value: F, digits: Option<i64>) -> String {
    let wide: f64 = value.into();
    if wide.is_nan() {
        "NaN".to_string()
    } else if wide == f64::INFINITY {
        "Infinity".to_string()
    } else if wide == f64::NEG_INFINITY {
        "-Infinity".to_string()
    } else {
        let text = value.to_string();
        BigDecimal::from_str(&text).map(|d| big_decimal_to_str(d, digits)).unwrap_or(text)
    }
}

fn arrow_decimal_to_str<T: DecimalType>(value: T::Native, scale: i8) -> String {
    let precision = u8::MAX; // does not matter
    let value = T::format_decimal(value, precision, scale);
    BigDecimal::from_str(&value).map(|d| big_decimal_to_str(d, Some(i64::from(scale)))).unwrap_or(value)
}

/// Converts a `BigDecimal` to its plain string representation, optionally rounding to a specified number of decimal places.
///
/// If `round_digits` is `None`, the value is rounded to 12 decimal places by default.
#[expect(clippy::needless_pass_by_value)]
fn big_decimal_to_str(value: BigDecimal, round_digits: Option<i64>) -> String {
    // Round the value to limit the number of decimal places
    let value = value.round(round_digits.unwrap_or(12)).normalized();
    // Format the value to a string
    value.to_plain_string()
}
