//! Joins: keyed state of both inputs (each side's rows, by join key, with their multiplicity).
//!
//! An inner join applies the bilinear rule Δ(A⋈B) = ΔA⋈B + A'⋈ΔB (A' = A + ΔA), which is
//! ΔA⋈B + A⋈ΔB + ΔA⋈ΔB. Outer, semi, anti and mark joins depend on whether a row has a match,
//! which is not linear: for every key a transaction touches, the join's output for that key is
//! computed before and after the change, and the difference is the output change. Rows whose
//! key is NULL never match (unless the join says NULL equals NULL, as `INTERSECT` does): they
//! are not kept, and pass straight through on the sides an outer or anti join preserves.

use crate::error::{unsupported, Result};
use crate::node::{batch_of, eval, filter_zset, mask, query, Deltas, Node};
use crate::zset::{relax_nullability, RowBytes, RowCodec, ZSet};
use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{JoinType, NullEquality};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One input of a join with its keyed state.
pub(crate) struct Side {
    pub(crate) node: Node,
    pub(crate) plan: LogicalPlan,
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) rows: RowCodec,
    /// Rows by join key, each with its multiplicity.
    state: HashMap<RowBytes, HashMap<RowBytes, i64>>,
    entries: usize,
    bytes: usize,
}

impl Side {
    pub(crate) fn new(node: Node, plan: LogicalPlan, keys: Vec<Arc<dyn PhysicalExpr>>) -> Result<Side> {
        let rows = RowCodec::new(node.schema())?;
        Ok(Side { node, plan, keys, rows, state: HashMap::new(), entries: 0, bytes: 0 })
    }

    /// The multiplicity of `row` under `key`.
    fn weight(&self, key: &[u8], row: &[u8]) -> i64 {
        self.state.get(key).and_then(|g| g.get(row)).copied().unwrap_or(0)
    }

    fn add(&mut self, key: &[u8], row: &[u8], weight: i64) {
        use crate::mem::{boxed, table};
        type Group = HashMap<RowBytes, i64>;
        let outer_before = self.state.capacity();
        let group = self.state.entry(key.into()).or_insert_with(|| {
            self.bytes += boxed(key.len());
            HashMap::new()
        });
        let inner_before = group.capacity();
        match group.get_mut(row) {
            Some(w) => {
                *w += weight;
                if *w == 0 {
                    group.remove(row);
                    self.entries -= 1;
                    self.bytes -= boxed(row.len());
                }
            }
            None => {
                group.insert(row.into(), weight);
                self.entries += 1;
                self.bytes += boxed(row.len());
            }
        }
        let inner_after = group.capacity();
        self.bytes = self.bytes + table::<(RowBytes, i64)>(inner_after) - table::<(RowBytes, i64)>(inner_before);
        if group.is_empty() {
            self.state.remove(key);
            self.bytes -= boxed(key.len()) + table::<(RowBytes, i64)>(inner_after);
        }
        let outer_after = self.state.capacity();
        if outer_after != outer_before {
            self.bytes =
                self.bytes + table::<(RowBytes, Group)>(outer_after) - table::<(RowBytes, Group)>(outer_before);
        }
    }
}

/// A join of two inputs.
pub(crate) struct JoinOp {
    pub(crate) left: Side,
    pub(crate) right: Side,
    join_type: JoinType,
    null_equality: NullEquality,
    /// Key values are cast to these types on both sides before they are encoded.
    key_types: Vec<DataType>,
    keys: RowCodec,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// The schema of left columns followed by right columns, where `filter` is evaluated.
    pair_schema: SchemaRef,
    schema: SchemaRef,
}

/// What the rows of one touched key contribute before the join type decides.
#[derive(Default)]
struct Candidates {
    left: Vec<(Box<[u8]>, i64)>,
    right: Vec<(Box<[u8]>, i64)>,
    /// (left index, right index) of every pair sharing a key.
    pairs: Vec<(u32, u32)>,
}

impl JoinOp {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        left: Side,
        right: Side,
        join_type: JoinType,
        null_equality: NullEquality,
        filter: Option<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> Result<JoinOp> {
        let left_schema = left.node.schema();
        let key_types = left.keys.iter().map(|k| Ok(k.data_type(&left_schema)?)).collect::<Result<Vec<_>>>()?;
        let key_fields: Vec<Field> =
            key_types.iter().enumerate().map(|(i, t)| Field::new(format!("k{i}"), t.clone(), true)).collect();
        let keys = RowCodec::new(Arc::new(Schema::new(key_fields)))?;
        let mut fields: Vec<_> = left_schema.fields().iter().cloned().collect();
        fields.extend(right.node.schema().fields().iter().cloned());
        let pair_schema = relax_nullability(&Arc::new(Schema::new(fields)));
        if matches!(join_type, JoinType::RightMark) {
            return Err(unsupported("Join", "a right mark join"));
        }
        Ok(JoinOp {
            left,
            right,
            join_type,
            null_equality,
            key_types,
            keys,
            filter,
            pair_schema,
            schema: relax_nullability(&schema),
        })
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub(crate) fn inputs(&self) -> Vec<&Node> {
        vec![&self.left.node, &self.right.node]
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "Join {:?} on {} key(s){}: state left {} rows in {} keys, right {} rows in {} keys, {}",
            self.join_type,
            self.key_types.len(),
            if self.filter.is_some() { " with a residual filter" } else { "" },
            self.left.entries,
            self.left.state.len(),
            self.right.entries,
            self.right.state.len(),
            crate::format_bytes(self.state_bytes())
        )
    }

    pub(crate) fn state_bytes(&self) -> usize {
        self.left.bytes + self.right.bytes + self.left.node.state_bytes() + self.right.node.state_bytes()
    }

    /// Join keys of every row of `z` (None: a NULL in the key, which matches nothing) and the
    /// rows' own encoding.
    fn encode(&self, left: bool, z: &ZSet) -> Result<(Vec<Option<RowBytes>>, arrow::row::Rows)> {
        let side = if left { &self.left } else { &self.right };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(side.keys.len());
        for (k, t) in side.keys.iter().zip(&self.key_types) {
            let a = eval(k, &z.batch)?;
            columns.push(if a.data_type() == t { a } else { arrow::compute::cast(&a, t)? });
        }
        let null_matches = matches!(self.null_equality, NullEquality::NullEqualsNull);
        // Without keys (a cross join) every row has the one empty key.
        let keys = (!columns.is_empty()).then(|| self.keys.encode(&columns)).transpose()?;
        let out = (0..z.len())
            .map(|i| {
                let has_null = columns.iter().any(|c| c.is_null(i));
                (null_matches || !has_null)
                    .then(|| keys.as_ref().map_or_else(Box::default, |k| Box::<[u8]>::from(k.row(i).as_ref())))
            })
            .collect();
        Ok((out, side.rows.encode_batch(&z.batch)?))
    }

    fn absorb(&mut self, left: bool, z: &ZSet) -> Result<()> {
        let (keys, rows) = self.encode(left, z)?;
        let side = if left { &mut self.left } else { &mut self.right };
        for (i, k) in keys.iter().enumerate() {
            if let Some(k) = k {
                side.add(k, rows.row(i).as_ref(), z.weights[i]);
            }
        }
        // Once the whole change is in (a row may be retracted before it is inserted again),
        // no row may be held a negative number of times.
        for (i, k) in keys.iter().enumerate() {
            let Some(k) = k else { continue };
            let row = rows.row(i);
            if z.weights[i] < 0 {
                let count = side.weight(k, row.as_ref());
                if count < 0 {
                    return Err(crate::ViewError::AbsentRowDeleted {
                        operator: format!("the join's {} input", if left { "left" } else { "right" }),
                        row: side.rows.describe(row.as_ref()),
                        count,
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn populate(&mut self, ctx: &SessionContext) -> Result<()> {
        self.left.node.populate(ctx).await?;
        self.right.node.populate(ctx).await?;
        for z in query(ctx, &self.left.plan, self.left.node.schema()).await? {
            self.absorb(true, &z)?;
        }
        for z in query(ctx, &self.right.plan, self.right.node.schema()).await? {
            self.absorb(false, &z)?;
        }
        Ok(())
    }

    pub(crate) fn step(&mut self, deltas: &Deltas) -> Result<ZSet> {
        let dl = self.left.node.step(deltas)?.consolidate()?;
        let dr = self.right.node.step(deltas)?.consolidate()?;
        if dl.is_empty() && dr.is_empty() {
            return Ok(ZSet::empty(self.schema.clone()));
        }
        match self.join_type {
            JoinType::Inner => self.step_inner(&dl, &dr),
            _ => self.step_by_key(&dl, &dr),
        }
    }

    fn step_inner(&mut self, dl: &ZSet, dr: &ZSet) -> Result<ZSet> {
        let mut left_rows: Vec<Box<[u8]>> = Vec::new();
        let mut right_rows: Vec<Box<[u8]>> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        // ΔA ⋈ B
        let (lk, lrows) = self.encode(true, dl)?;
        for (i, k) in lk.iter().enumerate() {
            let Some(group) = k.as_ref().and_then(|k| self.right.state.get(k)) else { continue };
            for (r, wr) in group {
                left_rows.push(lrows.row(i).as_ref().into());
                right_rows.push(r.clone());
                weights.push(dl.weights[i] * wr);
            }
        }
        self.absorb(true, dl)?;
        // A' ⋈ ΔB
        let (rk, rrows) = self.encode(false, dr)?;
        for (j, k) in rk.iter().enumerate() {
            let Some(group) = k.as_ref().and_then(|k| self.left.state.get(k)) else { continue };
            for (l, wl) in group {
                left_rows.push(l.clone());
                right_rows.push(rrows.row(j).as_ref().into());
                weights.push(wl * dr.weights[j]);
            }
        }
        self.absorb(false, dr)?;
        let pairs = self.pairs(&left_rows, &right_rows, weights)?;
        match &self.filter {
            Some(f) => filter_zset(&pairs, f)?.with_schema(self.schema.clone()),
            None => pairs.with_schema(self.schema.clone()),
        }
    }

    /// Left rows beside right rows (same length) as one Z-set of the pair schema.
    fn pairs(&self, left: &[Box<[u8]>], right: &[Box<[u8]>], weights: Vec<i64>) -> Result<ZSet> {
        let l = self.left.rows.decode(left.iter().map(|r| r.as_ref()))?;
        let r = self.right.rows.decode(right.iter().map(|r| r.as_ref()))?;
        let mut columns = l.columns().to_vec();
        columns.extend(r.columns().iter().cloned());
        let batch = batch_of(&self.pair_schema, columns, weights.len())?;
        ZSet::new(batch, weights).with_schema(self.pair_schema.clone())
    }

    fn step_by_key(&mut self, dl: &ZSet, dr: &ZSet) -> Result<ZSet> {
        let (lk, _) = self.encode(true, dl)?;
        let (rk, _) = self.encode(false, dr)?;
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        let mut seen: HashSet<Box<[u8]>> = HashSet::new();
        for k in lk.iter().chain(rk.iter()).flatten() {
            if seen.insert(k.clone()) {
                touched.push(k.clone());
            }
        }
        let before = self.output_for(&touched)?;
        self.absorb(true, dl)?;
        self.absorb(false, dr)?;
        let after = self.output_for(&touched)?;
        // Rows with a NULL key: unmatched by construction, kept by no state.
        let null_left: Vec<u32> = lk.iter().enumerate().filter(|(_, k)| k.is_none()).map(|(i, _)| i as u32).collect();
        let null_right: Vec<u32> = rk.iter().enumerate().filter(|(_, k)| k.is_none()).map(|(i, _)| i as u32).collect();
        let mut parts = vec![after, before.negate()];
        if !null_left.is_empty() {
            let z = dl.take(&null_left)?;
            parts.push(self.unmatched(true, &z.batch, z.weights)?);
        }
        if !null_right.is_empty() {
            let z = dr.take(&null_right)?;
            parts.push(self.unmatched(false, &z.batch, z.weights)?);
        }
        ZSet::concat(self.schema.clone(), parts)?.consolidate()
    }

    /// What unmatched rows of one side contribute to the output: padded with NULLs (outer
    /// joins), as they are (anti joins), with `mark = false`, or nothing.
    fn unmatched(&self, left: bool, rows: &arrow::array::RecordBatch, weights: Vec<i64>) -> Result<ZSet> {
        use JoinType::*;
        let n = rows.num_rows();
        let keep = match (self.join_type, left) {
            (Left | Full, true) | (Right | Full, false) => {
                let (l, r): (Vec<ArrayRef>, Vec<ArrayRef>) = if left {
                    (rows.columns().to_vec(), nulls(&self.right.node.schema(), n))
                } else {
                    (nulls(&self.left.node.schema(), n), rows.columns().to_vec())
                };
                Some([l, r].concat())
            }
            (LeftAnti, true) | (RightAnti, false) => Some(rows.columns().to_vec()),
            (LeftMark, true) => {
                let mut c = rows.columns().to_vec();
                c.push(Arc::new(BooleanArray::from(vec![false; n])));
                Some(c)
            }
            _ => None,
        };
        match keep {
            Some(columns) => ZSet::new(batch_of(&self.schema, columns, n)?, weights).with_schema(self.schema.clone()),
            None => Ok(ZSet::empty(self.schema.clone())),
        }
    }

    /// The join's whole output for the rows under `keys`, from the current state.
    fn output_for(&self, keys: &[Box<[u8]>]) -> Result<ZSet> {
        let mut c = Candidates::default();
        for k in keys {
            let l0 = c.left.len() as u32;
            let r0 = c.right.len() as u32;
            if let Some(g) = self.left.state.get(k) {
                c.left.extend(g.iter().map(|(r, w)| (r.clone(), *w)));
            }
            if let Some(g) = self.right.state.get(k) {
                c.right.extend(g.iter().map(|(r, w)| (r.clone(), *w)));
            }
            for li in l0..c.left.len() as u32 {
                for ri in r0..c.right.len() as u32 {
                    c.pairs.push((li, ri));
                }
            }
        }
        let lb = self.left.rows.decode(c.left.iter().map(|(r, _)| r.as_ref()))?;
        let rb = self.right.rows.decode(c.right.iter().map(|(r, _)| r.as_ref()))?;
        let li = arrow::array::UInt32Array::from(c.pairs.iter().map(|p| p.0).collect::<Vec<_>>());
        let ri = arrow::array::UInt32Array::from(c.pairs.iter().map(|p| p.1).collect::<Vec<_>>());
        let mut columns: Vec<ArrayRef> =
            lb.columns().iter().map(|a| take(a, &li, None)).collect::<std::result::Result<_, _>>()?;
        columns.extend(rb.columns().iter().map(|a| take(a, &ri, None)).collect::<std::result::Result<Vec<_>, _>>()?);
        let weights: Vec<i64> = c.pairs.iter().map(|(l, r)| c.left[*l as usize].1 * c.right[*r as usize].1).collect();
        let pairs = ZSet::new(batch_of(&self.pair_schema, columns, weights.len())?, weights);
        let pass: Vec<bool> = match &self.filter {
            Some(f) if !pairs.is_empty() => mask(f, &pairs.batch)?.values().iter().collect(),
            _ => vec![true; pairs.len()],
        };
        let mut left_matched = vec![false; c.left.len()];
        let mut right_matched = vec![false; c.right.len()];
        for (p, (l, r)) in c.pairs.iter().enumerate() {
            if pass[p] {
                left_matched[*l as usize] = true;
                right_matched[*r as usize] = true;
            }
        }
        use JoinType::*;
        let passing: Vec<u32> = (0..c.pairs.len() as u32).filter(|p| pass[*p as usize]).collect();
        let left_where =
            |m: bool| -> Vec<u32> { (0..c.left.len() as u32).filter(|i| left_matched[*i as usize] == m).collect() };
        let right_where =
            |m: bool| -> Vec<u32> { (0..c.right.len() as u32).filter(|i| right_matched[*i as usize] == m).collect() };
        let lz = ZSet::new(lb.clone(), c.left.iter().map(|(_, w)| *w).collect());
        let rz = ZSet::new(rb.clone(), c.right.iter().map(|(_, w)| *w).collect());
        let mut parts = Vec::new();
        match self.join_type {
            Inner | Left | Right | Full => {
                parts.push(pairs.take(&passing)?.with_schema(self.schema.clone())?);
                if matches!(self.join_type, Left | Full) {
                    let z = lz.take(&left_where(false))?;
                    parts.push(self.unmatched(true, &z.batch, z.weights)?);
                }
                if matches!(self.join_type, Right | Full) {
                    let z = rz.take(&right_where(false))?;
                    parts.push(self.unmatched(false, &z.batch, z.weights)?);
                }
            }
            LeftSemi => parts.push(lz.take(&left_where(true))?.with_schema(self.schema.clone())?),
            RightSemi => parts.push(rz.take(&right_where(true))?.with_schema(self.schema.clone())?),
            LeftAnti => parts.push(lz.take(&left_where(false))?.with_schema(self.schema.clone())?),
            RightAnti => parts.push(rz.take(&right_where(false))?.with_schema(self.schema.clone())?),
            LeftMark => {
                let mut columns = lz.batch.columns().to_vec();
                columns.push(Arc::new(BooleanArray::from(left_matched.clone())));
                parts.push(
                    ZSet::new(batch_of(&self.schema, columns, lz.len())?, lz.weights.clone())
                        .with_schema(self.schema.clone())?,
                );
            }
            RightMark => return Err(unsupported("Join", "a right mark join")),
        }
        ZSet::concat(self.schema.clone(), parts)
    }
}

fn nulls(schema: &SchemaRef, n: usize) -> Vec<ArrayRef> {
    schema.fields().iter().map(|f| new_null_array(f.data_type(), n)).collect()
}
