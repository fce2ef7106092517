//! Z-sets: a change to a relation as Arrow rows, each with an `i64` weight (+1 an insert, −1 a
//! delete; an update is −old +new). Rows are compared by their `arrow-row` encoding, which is
//! also how operators keep state ([`RowCodec`]).

use crate::error::Result;
use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{Row, RowConverter, SortField};
use std::collections::HashMap;
use std::sync::Arc;

/// Rows of one schema with a weight each. Not necessarily consolidated: the same row may appear
/// twice, and weights may be zero until [`ZSet::consolidate`].
#[derive(Debug, Clone)]
pub struct ZSet {
    /// The rows.
    pub batch: RecordBatch,
    /// One weight per row.
    pub weights: Vec<i64>,
}

impl ZSet {
    /// No rows.
    pub fn empty(schema: SchemaRef) -> ZSet {
        ZSet { batch: RecordBatch::new_empty(schema), weights: Vec::new() }
    }

    /// Every row of `batch` with weight `weight`.
    pub fn uniform(batch: RecordBatch, weight: i64) -> ZSet {
        let weights = vec![weight; batch.num_rows()];
        ZSet { batch, weights }
    }

    /// Rows and weights (same length).
    pub fn new(batch: RecordBatch, weights: Vec<i64>) -> ZSet {
        debug_assert_eq!(batch.num_rows(), weights.len());
        ZSet { batch, weights }
    }

    /// Number of rows (not the sum of weights).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The schema of the rows.
    pub fn schema(&self) -> SchemaRef {
        self.batch.schema()
    }

    /// All of `parts` (same schema) as one Z-set.
    pub fn concat(schema: SchemaRef, parts: Vec<ZSet>) -> Result<ZSet> {
        let parts: Vec<ZSet> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        match parts.len() {
            0 => return Ok(ZSet::empty(schema)),
            1 => return parts.into_iter().next().expect("one part").with_schema(schema),
            _ => {}
        }
        let batches: Vec<RecordBatch> = parts.iter().map(|p| p.batch.clone()).collect();
        let batch = concat_batches(&batches[0].schema(), &batches)?;
        let weights = parts.into_iter().flat_map(|p| p.weights).collect();
        ZSet { batch, weights }.with_schema(schema)
    }

    /// The same columns under `schema` (names and qualifiers change at aliases and unions).
    pub fn with_schema(self, schema: SchemaRef) -> Result<ZSet> {
        if Arc::ptr_eq(&schema, &self.batch.schema()) || schema.as_ref() == self.batch.schema().as_ref() {
            return Ok(self);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(self.batch.num_rows()));
        let columns =
            self.batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        arrow::compute::cast(c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
        let relaxed = relax_nullability(&schema);
        let batch = RecordBatch::try_new_with_options(relaxed, columns, &options)?;
        Ok(ZSet { batch, weights: self.weights })
    }

    /// The rows at `indices`, with their weights.
    pub fn take(&self, indices: &[u32]) -> Result<ZSet> {
        let idx = arrow::array::UInt32Array::from(indices.to_vec());
        let columns =
            self.batch.columns().iter().map(|c| take(c, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(indices.len()));
        let batch = RecordBatch::try_new_with_options(self.batch.schema(), columns, &options)?;
        let weights = indices.iter().map(|&i| self.weights[i as usize]).collect();
        Ok(ZSet { batch, weights })
    }

    /// Every weight negated.
    pub fn negate(mut self) -> ZSet {
        for w in &mut self.weights {
            *w = -*w;
        }
        self
    }

    /// Equal rows merged (weights summed), rows of weight zero dropped.
    pub fn consolidate(&self) -> Result<ZSet> {
        if self.is_empty() {
            return Ok(self.clone());
        }
        let codec = RowCodec::new(self.schema())?;
        let rows = codec.encode_batch(&self.batch)?;
        // foldhash (DataFusion's own), not std's SipHash: a spooled change merges millions of rows.
        let mut index: HashMap<Row<'_>, usize, datafusion::common::hash_utils::RandomState> =
            HashMap::with_capacity_and_hasher(rows.num_rows(), Default::default());
        let mut first: Vec<u32> = Vec::new();
        let mut sums: Vec<i64> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let w = self.weights[i];
            match index.get(&row) {
                Some(&slot) => sums[slot] += w,
                None => {
                    index.insert(row, first.len());
                    first.push(i as u32);
                    sums.push(w);
                }
            }
        }
        let keep: Vec<u32> = first.iter().zip(&sums).filter(|(_, s)| **s != 0).map(|(i, _)| *i).collect();
        let weights: Vec<i64> = sums.into_iter().filter(|s| *s != 0).collect();
        let mut out = self.take(&keep)?;
        out.weights = weights;
        Ok(out)
    }

    /// Rows with their multiplicity expanded (weights must be positive): what a table holds.
    pub fn expand(&self) -> Result<RecordBatch> {
        let mut idx = Vec::new();
        for (i, &w) in self.weights.iter().enumerate() {
            for _ in 0..w.max(0) {
                idx.push(i as u32);
            }
        }
        Ok(self.take(&idx)?.batch)
    }

    /// Bytes of its rows alone (of a slice, its share of the buffers it points into).
    pub fn slice_bytes(&self) -> usize {
        let columns: usize =
            self.batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum();
        columns + self.weights.len() * 8
    }

    /// Bytes of the Arrow buffers.
    pub fn bytes(&self) -> usize {
        self.batch.get_array_memory_size() + self.weights.len() * 8
    }
}

/// The same schema with every field nullable: operator outputs (outer joins, aggregates over
/// nothing) may carry NULL where the plan's schema says a column cannot.
pub fn relax_nullability(schema: &SchemaRef) -> SchemaRef {
    if schema.fields().iter().all(|f| f.is_nullable()) {
        return schema.clone();
    }
    let fields: Vec<_> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A row (or a key) as its `arrow-row` bytes: how operators keep state.
pub type RowBytes = Box<[u8]>;

/// Rows of one schema to and from their `arrow-row` bytes: how state is keyed and compared.
pub struct RowCodec {
    converter: RowConverter,
    schema: SchemaRef,
}

impl std::fmt::Debug for RowCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowCodec").field("schema", &self.schema).finish()
    }
}

impl RowCodec {
    /// A codec for the columns of `schema`, in ascending order.
    pub fn new(schema: SchemaRef) -> Result<RowCodec> {
        let mut fields: Vec<SortField> =
            schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        if fields.is_empty() {
            // Rows without columns (`SELECT count(*)` scans none) are encoded as one NULL.
            fields.push(SortField::new(arrow::datatypes::DataType::Null));
        }
        Ok(RowCodec { converter: RowConverter::new(fields)?, schema })
    }

    /// Encodes every row of `batch` (whose columns are this codec's).
    pub fn encode_batch(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        if self.schema.fields().is_empty() {
            return self.encode(&[arrow::array::new_null_array(&arrow::datatypes::DataType::Null, batch.num_rows())]);
        }
        self.encode(batch.columns())
    }

    /// A codec whose byte order is `options`' order (for sort keys).
    pub fn sorted(schema: SchemaRef, options: Vec<arrow::compute::SortOptions>) -> Result<RowCodec> {
        let fields = schema
            .fields()
            .iter()
            .zip(options)
            .map(|(f, o)| SortField::new_with_options(f.data_type().clone(), o))
            .collect();
        Ok(RowCodec { converter: RowConverter::new(fields)?, schema })
    }

    /// The schema of the decoded columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Encodes `columns` (one per field).
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<arrow::row::Rows> {
        Ok(self.converter.convert_columns(columns)?)
    }

    /// One row's bytes as `(column=value, ...)`, for error messages.
    pub fn describe(&self, row: &[u8]) -> String {
        match self.decode([row]) {
            Ok(batch) => describe_row(&batch),
            Err(_) => "(a row)".into(),
        }
    }

    /// Decodes row bytes (from [`RowCodec::encode`] of this codec) into a batch.
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let parsed: Vec<Row<'_>> = rows.into_iter().map(|b| parser.parse(b)).collect();
        let n = parsed.len();
        let mut columns = self.converter.convert_rows(parsed)?;
        if self.schema.fields().is_empty() {
            columns.clear();
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(relax_nullability(&self.schema), columns, &options)?)
    }
}

/// The first row of `batch` as `(column=value, ...)`, for error messages.
pub(crate) fn describe_row(batch: &RecordBatch) -> String {
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let values: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let v = arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options)
                .map_or_else(|_| "?".to_string(), |fmt| fmt.value(0).to_string());
            format!("{}={v}", f.name())
        })
        .collect();
    format!("({})", values.join(", "))
}
