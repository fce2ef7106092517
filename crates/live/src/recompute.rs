//! Views with `refresh = recompute`: their SQL run again after every transaction that changes
//! what they read, the change being the difference of contents; and the current rows of the
//! tables they read.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use spillway_views::{Arrangement, RowCodec, ViewError, ZSet};
use std::collections::BTreeSet;

/// A view recomputed after every transaction that changes what it reads.
pub(crate) struct Recomputed {
    pub(crate) sql: String,
    pub(crate) tables: BTreeSet<String>,
    pub(crate) codec: RowCodec,
    /// Its rows with their multiplicity (one empty key).
    pub(crate) contents: Arrangement,
    pub(crate) rows: RecordBatch,
}

impl Recomputed {
    /// Replaces the contents with `batches`; returns the change.
    pub(crate) fn replace(&mut self, batches: Vec<RecordBatch>) -> std::result::Result<ZSet, ViewError> {
        let schema = self.codec.schema().clone();
        let mut next = Arrangement::new();
        for b in &batches {
            let z = ZSet::uniform(b.clone(), 1).with_schema(schema.clone())?;
            for r in self.codec.encode_batch(&z.batch)?.iter() {
                next.add(&[], r.as_ref(), 1);
            }
        }
        // The change: what is new less what was (each row's difference of multiplicity).
        let (mut rows, mut weights): (Vec<&[u8]>, Vec<i64>) = (Vec::new(), Vec::new());
        for (_, r, c) in next.iter() {
            let d = c - self.contents.weight(&[], r);
            if d != 0 {
                rows.push(r);
                weights.push(d);
            }
        }
        for (_, r, c) in self.contents.iter() {
            if next.weight(&[], r) == 0 {
                rows.push(r);
                weights.push(-c);
            }
        }
        let out = ZSet::new(self.codec.decode(rows)?, weights);
        self.rows = self.codec.decode(next.rows())?;
        self.contents = next;
        Ok(out)
    }
}

/// A table's current rows with their multiplicity (for views recomputed from it).
pub(crate) struct Current {
    pub(crate) codec: RowCodec,
    pub(crate) schema: SchemaRef,
    /// Its rows with their multiplicity (one empty key).
    pub(crate) rows: Arrangement,
}

impl Current {
    pub(crate) fn apply(&mut self, z: &ZSet) -> std::result::Result<(), ViewError> {
        let z = z.clone().with_schema(self.schema.clone())?;
        let rows = self.codec.encode_batch(&z.batch)?;
        for (i, r) in rows.iter().enumerate() {
            self.rows.add(&[], r.as_ref(), z.weights[i]);
            let c = self.rows.weight(&[], r.as_ref());
            if c < 0 {
                self.rows.add(&[], r.as_ref(), -c);
            }
        }
        Ok(())
    }

    /// What applying `z` may allocate (reserved before it is applied).
    pub(crate) fn growth(&self, z: &ZSet) -> usize {
        let added = z.weights.iter().filter(|w| **w > 0).count();
        self.rows.growth(added, if added > 0 { z.slice_bytes() } else { 0 })
    }

    pub(crate) fn batch(&self) -> std::result::Result<RecordBatch, ViewError> {
        self.codec.decode(self.rows.rows())
    }
}
