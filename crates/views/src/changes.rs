//! Change rows as users write them, to Z-sets: a batch with the table's columns plus `_op`.
//!
//! - `insert`: a new row (+1); `delete`: a row to remove (−1), given in full;
//! - on a table with a key ([`KeyedTable`]): `upsert` carries the new row and replaces the row
//!   with its key, if any (−old +new); `delete` may carry only the key columns (others NULL),
//!   and retracts the row the table holds under it; an `insert` of a key that exists, or a
//!   `delete` of one that does not, is an error naming the key.
//!
//! A keyed table keeps every current row by key (counted in [`KeyedTable::bytes`]): that is
//! what lets a delete say only the key.

use crate::arrange::Arrangement;
use crate::compact::{Encoded, StateCodec};
use crate::error::{Result, ViewError};
use crate::zset::ZSet;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};

/// The operation column of a change file.
pub const OP_COLUMN: &str = "_op";

/// One operation of a change row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert,
    /// A row removed.
    Delete,
    /// A row inserted or replacing the row with its key (keyed tables only).
    Upsert,
}

/// The rows of `batch` in `schema` (columns matched by name, cast where types differ) and the
/// operation of each.
pub fn decode(table: &str, batch: &RecordBatch, schema: &SchemaRef) -> Result<(RecordBatch, Vec<Op>)> {
    let bad = |reason: String| ViewError::BadChange { table: table.to_string(), reason };
    let op = batch
        .column_by_name(OP_COLUMN)
        .ok_or_else(|| bad(format!("no {OP_COLUMN} column (insert, delete or upsert)")))?;
    let op = arrow::compute::cast(op, &DataType::Utf8)?;
    let op = op.as_string::<i32>();
    let mut ops = Vec::with_capacity(op.len());
    for i in 0..op.len() {
        ops.push(match op.is_valid(i).then(|| op.value(i).trim().to_ascii_lowercase()).as_deref() {
            Some("insert" | "i" | "+") => Op::Insert,
            Some("delete" | "d" | "-") => Op::Delete,
            Some("upsert" | "u" | "update") => Op::Upsert,
            other => {
                return Err(bad(format!(
                    "row {}: {OP_COLUMN} is {:?}, not insert, delete or upsert",
                    i + 1,
                    other.unwrap_or("NULL")
                )))
            }
        });
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
        };
        columns.push(if c.data_type() == f.data_type() {
            c
        } else {
            arrow::compute::cast(&c, f.data_type()).map_err(|e| bad(format!("column {}: {e}", f.name())))?
        });
    }
    for name in batch.schema().fields().iter().map(|f| f.name()) {
        if name != OP_COLUMN && schema.field_with_name(name).is_err() {
            return Err(bad(format!("column {name} is not a column of the table")));
        }
    }
    let relaxed = crate::zset::relax_nullability(schema);
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok((RecordBatch::try_new_with_options(relaxed, columns, &options)?, ops))
}

/// The Z-set of a change batch on a table without a key: inserts +1, deletes −1.
pub fn unkeyed(table: &str, batch: &RecordBatch, schema: &SchemaRef) -> Result<ZSet> {
    let (rows, ops) = decode(table, batch, schema)?;
    let weights = ops
        .iter()
        .map(|o| match o {
            Op::Insert => Ok(1),
            Op::Delete => Ok(-1),
            Op::Upsert => Err(ViewError::BadChange {
                table: table.to_string(),
                reason: "upsert needs a key: declare key = [...] on the source".into(),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ZSet::new(rows, weights))
}

/// A change batch of a [`KeyedTable`], decoded and encoded, before it is applied.
pub struct Prepared {
    rows_batch: RecordBatch,
    ops: Vec<Op>,
    keys: Encoded,
    rows: Encoded,
}

/// A table with a key: its current rows by key.
pub struct KeyedTable {
    name: String,
    schema: SchemaRef,
    key: Vec<usize>,
    keys: StateCodec,
    rows: StateCodec,
    /// Each key's one row (weight 1).
    by_key: Arrangement,
}

impl KeyedTable {
    /// An empty table of `schema` keyed by the columns `key`.
    pub fn new(name: &str, schema: SchemaRef, key: &[String]) -> Result<KeyedTable> {
        let idx = key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| ViewError::BadChange {
                    table: name.to_string(),
                    reason: format!("key column {k} does not exist"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let keys = StateCodec::new(std::sync::Arc::new(schema.project(&idx)?))?;
        let rows = StateCodec::new(schema.clone())?;
        Ok(KeyedTable { name: name.to_string(), schema, key: idx, keys, rows, by_key: Arrangement::new() })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.by_key.bytes()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when the table holds no row.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Loads existing rows (the snapshot): a key that repeats is an error.
    pub fn load(&mut self, batch: &RecordBatch) -> Result<()> {
        let z = ZSet::uniform(batch.clone(), 1).with_schema(self.schema.clone())?;
        let keys = self.keys.encode(&self.key.iter().map(|&i| z.batch.column(i).clone()).collect::<Vec<_>>())?;
        let rows = self.rows.encode_batch(&z.batch)?;
        for i in 0..z.len() {
            let k = keys.row(i);
            if self.by_key.contains_key(k) {
                return Err(self.key_error(&z.batch, i, "appears twice in the table"));
            }
            self.by_key.add(k, rows.row(i), 1);
        }
        Ok(())
    }

    fn key_error(&self, batch: &RecordBatch, i: usize, what: &str) -> ViewError {
        let key: Vec<String> = self
            .key
            .iter()
            .map(|&c| arrow::util::display::array_value_to_string(batch.column(c), i).unwrap_or_default())
            .collect();
        ViewError::BadChange { table: self.name.clone(), reason: format!("key ({}) {what}", key.join(", ")) }
    }

    /// The Z-set of a change batch, applied to the table: deletes by key retract the row held.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<ZSet> {
        let prepared = self.prepare(batch)?;
        self.apply_prepared(prepared)
    }

    /// A change batch read and encoded, not yet applied: [`KeyedTable::growth`] says what
    /// applying it may allocate, so that it is reserved first.
    pub fn prepare(&self, batch: &RecordBatch) -> Result<Prepared> {
        let (rows_batch, ops) = decode(&self.name, batch, &self.schema)?;
        let keys = self.keys.encode(&self.key.iter().map(|&i| rows_batch.column(i).clone()).collect::<Vec<_>>())?;
        let rows = self.rows.encode_batch(&rows_batch)?;
        Ok(Prepared { rows_batch, ops, keys, rows })
    }

    /// At most what applying `p` allocates: its inserted and upserted rows added to the table
    /// (a row it replaces leaves dead bytes, freed by a later rewrite).
    pub fn growth(&self, p: &Prepared) -> usize {
        let added = p.ops.iter().enumerate().filter(|(_, op)| matches!(op, Op::Insert | Op::Upsert));
        let (n, bytes) = added.fold((0, 0), |(n, b), (i, _)| (n + 1, b + p.keys.row(i).len() + p.rows.row(i).len()));
        self.by_key.growth(n, bytes)
    }

    /// Applies a batch [`KeyedTable::prepare`]d (see [`KeyedTable::apply`]).
    pub fn apply_prepared(&mut self, p: Prepared) -> Result<ZSet> {
        let Prepared { rows_batch, ops, keys, rows } = p;
        let mut out_rows: Vec<Box<[u8]>> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let k = keys.row(i);
            let r = rows.row(i);
            let old = match op {
                Op::Insert if self.by_key.contains_key(k) => {
                    return Err(self.key_error(&rows_batch, i, "is inserted but exists (use upsert)"))
                }
                Op::Delete => {
                    Some(self.take(k).ok_or_else(|| self.key_error(&rows_batch, i, "is deleted but does not exist"))?)
                }
                Op::Insert | Op::Upsert => self.take(k),
            };
            if let Some(old) = old {
                out_rows.push(old);
                weights.push(-1);
            }
            if matches!(op, Op::Insert | Op::Upsert) {
                out_rows.push(r.into());
                weights.push(1);
                self.by_key.add(k, r, 1);
            }
        }
        let batch = self.rows.decode(out_rows.iter().map(|r| r.as_ref()))?;
        ZSet::new(batch, weights).with_schema(self.schema.clone())?.consolidate()
    }

    /// Empties the table (a TRUNCATE): the Z-set retracting every row it held.
    pub fn truncate(&mut self) -> Result<ZSet> {
        let batch = self.rows.decode(self.by_key.iter().map(|(_, r, _)| r))?;
        self.by_key.clear();
        let n = batch.num_rows();
        ZSet::new(batch, vec![-1; n]).with_schema(self.schema.clone())
    }

    /// What [`KeyedTable::absorb`] of `z` may allocate: its rows of weight +1 added, their bytes
    /// estimated from their Arrow size (as the current rows' growth is; `absorb` encodes them).
    pub fn absorb_growth(&self, z: &ZSet) -> usize {
        let added = z.weights.iter().filter(|w| **w > 0).count();
        self.by_key.growth(added, if added > 0 { z.slice_bytes() } else { 0 })
    }

    /// Applies a Z-set already resolved against this table (a replayed transaction): rows of
    /// weight −1 leave, rows of weight +1 arrive.
    pub fn absorb(&mut self, z: &ZSet) -> Result<()> {
        let z = z.clone().with_schema(self.schema.clone())?;
        let keys = self.keys.encode(&self.key.iter().map(|&i| z.batch.column(i).clone()).collect::<Vec<_>>())?;
        let rows = self.rows.encode_batch(&z.batch)?;
        let mut order: Vec<usize> = (0..z.len()).collect();
        order.sort_by_key(|&i| z.weights[i]); // retractions first
        for i in order {
            let k = keys.row(i);
            self.take(k);
            if z.weights[i] > 0 {
                self.by_key.add(k, rows.row(i), 1);
            }
        }
        Ok(())
    }

    /// Rewrites the rows' arena once deletes left it mostly dead, when `reserve` grants what the
    /// rewrite holds meanwhile (see [`Arrangement::compact_if`]).
    pub fn compact_if<G>(&mut self, reserve: impl FnOnce(usize) -> Option<G>) {
        self.by_key.compact_if(reserve)
    }

    /// Removes the row under `key`; the row it was.
    fn take(&mut self, key: &[u8]) -> Option<Box<[u8]>> {
        let (row, w) = self.by_key.get(key).next().map(|(r, w)| (Box::<[u8]>::from(r), w))?;
        self.by_key.add(key, &row, -w);
        Some(row)
    }
}
