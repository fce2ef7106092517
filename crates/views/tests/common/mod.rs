//! What the oracle tests share: results as comparable multisets.

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use std::sync::Arc;

/// Rows as sorted strings (floats to 6 decimals: retractions may differ in the last bit).
pub fn multiset(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    let options = FormatOptions::default().with_null("NULL");
    for b in batches {
        let columns: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Float64 | DataType::Float32 => {
                    let f = arrow::compute::cast(c, &DataType::Float64).unwrap();
                    let f = f.as_any().downcast_ref::<Float64Array>().unwrap();
                    Arc::new(StringArray::from_iter(f.iter().map(|v| v.map(|v| format!("{:.6}", v + 0.0))))) as ArrayRef
                }
                _ => c.clone(),
            })
            .collect();
        let fmts: Vec<_> = columns.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for i in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(i).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    out.sort();
    out
}
