//! Joins: keyed state of both inputs (each side's rows, by join key, with their multiplicity).
//!
//! An inner join applies the bilinear rule Δ(A⋈B) = ΔA⋈B + A'⋈ΔB (A' = A + ΔA), which is
//! ΔA⋈B + A⋈ΔB + ΔA⋈ΔB. Outer, semi, anti and mark joins depend on whether a row has a match,
//! which is not linear: for every key a transaction touches, the join's output for that key is
//! computed before and after the change, and the difference is the output change. Rows whose
//! key is NULL never match (unless the join says NULL equals NULL, as `INTERSECT` does): they
//! are not kept, and pass straight through on the sides an outer or anti join preserves.

use crate::arrange::Arrangement;
use crate::error::{unsupported, Result};
use crate::flight::Flight;
use crate::node::{batch_of, eval, filter_zset, mask, query, Deltas, Emit, Node};
use crate::zset::{relax_nullability, RowBytes, RowCodec, ZSet};
use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{JoinType, NullEquality};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::collections::HashSet;
use std::sync::Arc;

/// One input of a join with its keyed state.
pub(crate) struct Side {
    pub(crate) node: Node,
    plan: LogicalPlan,
    arr: Arranged,
    /// Whether its rows are kept: not when the other side never changes (an inner join's
    /// output then changes only by this side's changes joined with the other side's state).
    keep: bool,
}

impl Side {
    pub(crate) fn new(node: Node, plan: LogicalPlan, keys: Vec<Arc<dyn PhysicalExpr>>) -> Result<Side> {
        let rows = RowCodec::new(node.schema())?;
        let arr = Arranged { keys, rows, state: Arrangement::new(), counts: false };
        Ok(Side { node, plan, arr, keep: true })
    }
}

/// A side's rows by join key, each with its multiplicity.
struct Arranged {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    rows: RowCodec,
    state: Arrangement,
    /// Only how many rows each key has (one empty row per key, weighted by the count): the
    /// side a semi, anti or mark join tests for a match, with no residual filter to evaluate
    /// on its rows.
    counts: bool,
}

impl Arranged {
    /// What `row` is kept as: itself, or nothing but its key's count.
    fn kept<'r>(&self, row: &'r [u8]) -> &'r [u8] {
        if self.counts {
            &[]
        } else {
            row
        }
    }
}

/// What both sides of a join share: how keys are compared, the residual filter, the schemas.
struct Spec {
    join_type: JoinType,
    null_equality: NullEquality,
    /// Key values are cast to these types on both sides before they are encoded.
    key_types: Vec<DataType>,
    keys: RowCodec,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// The schema of left columns followed by right columns, where `filter` is evaluated.
    pair_schema: SchemaRef,
    left_schema: SchemaRef,
    right_schema: SchemaRef,
    schema: SchemaRef,
}

/// A join of two inputs.
pub(crate) struct JoinOp {
    left: Side,
    right: Side,
    spec: Spec,
}

/// What the rows of one touched key contribute before the join type decides.
#[derive(Default)]
struct Candidates<'a> {
    left: Vec<(&'a [u8], i64)>,
    right: Vec<(&'a [u8], i64)>,
    /// (left index, right index) of every pair sharing a key.
    pairs: Vec<(u32, u32)>,
}

/// Join pairs gathered for one piece of output: one row of a change beside rows of the other
/// side's state.
#[derive(Default)]
struct PairPiece<'a> {
    /// Index into the change of each pair's changed row.
    changed: Vec<u32>,
    /// The other side's row of each pair.
    other: Vec<&'a [u8]>,
    weights: Vec<i64>,
    /// Encoded bytes of the pairs: what the decoded piece is reserved as.
    bytes: usize,
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
        let right_schema = right.node.schema();
        let key_types = left.arr.keys.iter().map(|k| Ok(k.data_type(&left_schema)?)).collect::<Result<Vec<_>>>()?;
        let key_fields: Vec<Field> =
            key_types.iter().enumerate().map(|(i, t)| Field::new(format!("k{i}"), t.clone(), true)).collect();
        let keys = RowCodec::new(Arc::new(Schema::new(key_fields)))?;
        let mut fields: Vec<_> = left_schema.fields().iter().cloned().collect();
        fields.extend(right_schema.fields().iter().cloned());
        let pair_schema = relax_nullability(&Arc::new(Schema::new(fields)));
        if matches!(join_type, JoinType::RightMark) {
            return Err(unsupported("Join", "a right mark join"));
        }
        let (mut left, mut right) = (left, right);
        if filter.is_none() {
            match join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => right.arr.counts = true,
                JoinType::RightSemi | JoinType::RightAnti => left.arr.counts = true,
                _ => {}
            }
        }
        let spec = Spec {
            join_type,
            null_equality,
            key_types,
            keys,
            filter,
            pair_schema,
            left_schema,
            right_schema,
            schema: relax_nullability(&schema),
        };
        Ok(JoinOp { left, right, spec })
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    pub(crate) fn inputs(&self) -> Vec<&Node> {
        vec![&self.left.node, &self.right.node]
    }

    pub(crate) fn describe(&self) -> String {
        let side = |s: &Side, other: &str| {
            if s.keep && s.arr.counts {
                format!("a count per key ({} keys)", s.arr.state.keys())
            } else if s.keep {
                format!("{} rows in {} keys", s.arr.state.len(), s.arr.state.keys())
            } else {
                format!("none kept (the {other} side never changes)")
            }
        };
        format!(
            "Join {:?} on {} key(s){}: state left {}, right {}, {}",
            self.spec.join_type,
            self.spec.key_types.len(),
            if self.spec.filter.is_some() { " with a residual filter" } else { "" },
            side(&self.left, "right"),
            side(&self.right, "left"),
            crate::format_bytes(self.state_bytes())
        )
    }

    /// See [`Node::unchanging`]: an inner join keeps no rows of a side whose other side reads
    /// only `tables` (or nothing at all).
    pub(crate) fn unchanging(&mut self, tables: &std::collections::BTreeSet<String>) {
        self.left.node.unchanging(tables);
        self.right.node.unchanging(tables);
        if self.spec.join_type != JoinType::Inner {
            return;
        }
        let fixed = |n: &Node| {
            let mut reads = std::collections::BTreeSet::new();
            n.reads(&mut reads);
            reads.is_subset(tables)
        };
        self.left.keep = !fixed(&self.right.node);
        self.right.keep = !fixed(&self.left.node);
    }

    pub(crate) fn state_bytes(&self) -> usize {
        self.left.arr.state.bytes()
            + self.right.arr.state.bytes()
            + self.left.node.state_bytes()
            + self.right.node.state_bytes()
    }

    pub(crate) async fn populate(&mut self, ctx: &SessionContext) -> Result<()> {
        self.left.node.populate(ctx).await?;
        self.right.node.populate(ctx).await?;
        if self.left.keep {
            for z in query(ctx, &self.left.plan, self.left.node.schema()).await? {
                self.spec.absorb(&mut self.left.arr, true, &z, None)?;
            }
        }
        if self.right.keep {
            for z in query(ctx, &self.right.plan, self.right.node.schema()).await? {
                self.spec.absorb(&mut self.right.arr, false, &z, None)?;
            }
        }
        Ok(())
    }

    /// The left input's change, a piece at a time, then the right's: each piece's output is
    /// pushed (in pieces) before the piece enters its side's state, so that the right side's
    /// pieces meet the left state with the whole left change in it (the bilinear rule, or the
    /// per-key rule of outer, semi, anti and mark joins, applied piece by piece).
    pub(crate) fn step(&mut self, deltas: &Deltas, fl: &Flight, emit: &mut Emit<'_>) -> Result<()> {
        let JoinOp { left, right, spec } = self;
        left.node.step(deltas, fl, &mut |d| {
            let d = d.consolidate()?;
            spec.piece(true, left.keep, &d, &mut left.arr, &right.arr, fl, emit)
        })?;
        right.node.step(deltas, fl, &mut |d| {
            let d = d.consolidate()?;
            spec.piece(false, right.keep, &d, &mut right.arr, &left.arr, fl, emit)
        })
    }
}

impl Spec {
    /// One piece `d` of side `is_left`'s change: its output pushed, then `d` absorbed into
    /// `mine`; `other` is the other side's state.
    #[allow(clippy::too_many_arguments)]
    fn piece(
        &self,
        is_left: bool,
        keep: bool,
        d: &ZSet,
        mine: &mut Arranged,
        other: &Arranged,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        if d.is_empty() {
            return Ok(());
        }
        match self.join_type {
            JoinType::Inner => {
                self.delta_pairs(is_left, d, mine, other, fl, emit)?;
                if keep {
                    self.absorb(mine, is_left, d, Some(fl))?;
                }
                Ok(())
            }
            _ => self.by_key(is_left, d, mine, other, fl, emit),
        }
    }

    /// Join keys of every row of `z` (None: a NULL in the key, which matches nothing) and the
    /// rows' own encoding.
    fn encode(&self, side: &Arranged, z: &ZSet) -> Result<(Vec<Option<RowBytes>>, arrow::row::Rows)> {
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

    /// Adds `z` to `side`'s state. With `fl`, the state it may add is reserved first.
    fn absorb(&self, side: &mut Arranged, left: bool, z: &ZSet, fl: Option<&Flight>) -> Result<()> {
        let (keys, rows) = self.encode(side, z)?;
        if let Some(fl) = fl {
            let (mut n, mut bytes) = (0, 0);
            for (i, k) in keys.iter().enumerate() {
                if let (Some(k), true) = (k, z.weights[i] > 0) {
                    n += 1;
                    bytes += k.len() + side.kept(rows.row(i).data()).len();
                }
            }
            fl.grow_state(side.state.growth(n, bytes))?;
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(k) = k {
                let row = side.kept(rows.row(i).data());
                side.state.add(k, row, z.weights[i]);
            }
        }
        side.state.compact_if(|n| fl.and_then(|fl| fl.hold(n).ok()));
        // Once the whole change is in (a row may be retracted before it is inserted again),
        // no row may be held a negative number of times.
        for (i, k) in keys.iter().enumerate() {
            let Some(k) = k else { continue };
            let row = rows.row(i);
            if z.weights[i] < 0 {
                let count = side.state.weight(k, side.kept(row.data()));
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

    /// The inner join of change `d` (side `is_left`) with the other side's state, pushed in
    /// pieces of at most [`crate::flight::PIECE_ROWS`] pairs, each reserved before it is decoded.
    fn delta_pairs(
        &self,
        is_left: bool,
        d: &ZSet,
        mine: &Arranged,
        other: &Arranged,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let (keys, rows) = self.encode(mine, d)?;
        let mut piece = PairPiece::default();
        for (i, k) in keys.iter().enumerate() {
            let Some(k) = k else { continue };
            let row_len = rows.row(i).as_ref().len();
            for (r, w) in other.state.get(k) {
                piece.changed.push(i as u32);
                piece.other.push(r);
                piece.weights.push(d.weights[i] * w);
                piece.bytes += row_len + r.len() + 8;
                if piece.weights.len() >= fl.piece_rows {
                    self.push_pairs(is_left, &rows, mine, other, std::mem::take(&mut piece), fl, emit)?;
                }
            }
        }
        self.push_pairs(is_left, &rows, mine, other, piece, fl, emit)
    }

    /// Decodes one piece of pairs (its bytes reserved first), filters it, pushes it.
    #[allow(clippy::too_many_arguments)]
    fn push_pairs(
        &self,
        is_left: bool,
        rows: &arrow::row::Rows,
        mine: &Arranged,
        other: &Arranged,
        piece: PairPiece<'_>,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        if piece.weights.is_empty() {
            return Ok(());
        }
        // Decoded columns, the batch of pairs, and the filter's copy: about twice the rows.
        let mut held = fl.hold(piece.bytes * 2)?;
        let changed = mine.rows.decode(piece.changed.iter().map(|&i| rows.row(i as usize).data()))?;
        let others = other.rows.decode(piece.other.iter().copied())?;
        let (l, r) = if is_left { (changed, others) } else { (others, changed) };
        let mut columns = l.columns().to_vec();
        columns.extend(r.columns().iter().cloned());
        let pairs = ZSet::new(batch_of(&self.pair_schema, columns, piece.weights.len())?, piece.weights)
            .with_schema(self.pair_schema.clone())?;
        held.cover(pairs.bytes())?;
        let out = match &self.filter {
            Some(f) => filter_zset(&pairs, f)?,
            None => pairs,
        };
        if out.is_empty() {
            return Ok(());
        }
        emit(out.with_schema(self.schema.clone())?)
    }

    /// Outer, semi, anti and mark joins: for every key piece `d` touches, the join's output
    /// for it before and after `d` enters `mine`; the difference is pushed.
    fn by_key(
        &self,
        is_left: bool,
        d: &ZSet,
        mine: &mut Arranged,
        other: &Arranged,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let (dk, _) = self.encode(mine, d)?;
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        for k in dk.iter().flatten() {
            if seen.insert(k) {
                touched.push(k.clone());
            }
        }
        drop(seen);
        let before = {
            let (l, r) = if is_left { (&*mine, other) } else { (other, &*mine) };
            self.output_for(l, r, &touched, fl)?
        };
        let before_held = fl.hold(before.slice_bytes())?;
        self.absorb(mine, is_left, d, Some(fl))?;
        let after = {
            let (l, r) = if is_left { (&*mine, other) } else { (other, &*mine) };
            self.output_for(l, r, &touched, fl)?
        };
        let _after_held = fl.hold(after.slice_bytes())?;
        // Rows with a NULL key: unmatched by construction, kept by no state.
        let nulls: Vec<u32> = dk.iter().enumerate().filter(|(_, k)| k.is_none()).map(|(i, _)| i as u32).collect();
        let mut parts = vec![after, before.negate()];
        if !nulls.is_empty() {
            let z = d.take(&nulls)?;
            parts.push(self.unmatched(is_left, &z.batch, z.weights)?);
        }
        let _concat_held = fl.hold(parts.iter().map(|p| p.slice_bytes()).sum::<usize>() * 2)?;
        drop(before_held);
        let out = ZSet::concat(self.schema.clone(), parts)?.consolidate()?;
        if out.is_empty() {
            return Ok(());
        }
        emit(out)
    }

    /// What unmatched rows of one side contribute to the output: padded with NULLs (outer
    /// joins), as they are (anti joins), with `mark = false`, or nothing.
    fn unmatched(&self, left: bool, rows: &arrow::array::RecordBatch, weights: Vec<i64>) -> Result<ZSet> {
        use JoinType::*;
        let n = rows.num_rows();
        let keep = match (self.join_type, left) {
            (Left | Full, true) | (Right | Full, false) => {
                let (l, r): (Vec<ArrayRef>, Vec<ArrayRef>) = if left {
                    (rows.columns().to_vec(), nulls(&self.right_schema, n))
                } else {
                    (nulls(&self.left_schema, n), rows.columns().to_vec())
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

    /// The join's whole output for the rows under `keys`, from the states `l` and `r` (its
    /// candidates reserved in `fl` while it is built).
    fn output_for(&self, l: &Arranged, r: &Arranged, keys: &[Box<[u8]>], fl: &Flight) -> Result<ZSet> {
        let mut c = Candidates::default();
        let mut bytes = 0usize;
        for k in keys {
            let l0 = c.left.len() as u32;
            let r0 = c.right.len() as u32;
            c.left.extend(l.state.get(k));
            c.right.extend(r.state.get(k));
            let (ln, rn) = (c.left.len() - l0 as usize, c.right.len() - r0 as usize);
            let lb: usize = c.left[l0 as usize..].iter().map(|(r, _)| r.len() + 8).sum();
            let rb: usize = c.right[r0 as usize..].iter().map(|(r, _)| r.len() + 8).sum();
            // The pairs' decoded columns and their indices, the candidates themselves.
            bytes += ln * rn * 8 + lb * rn.max(1) + rb * ln.max(1) + 2 * (lb + rb);
            for li in l0..c.left.len() as u32 {
                for ri in r0..c.right.len() as u32 {
                    c.pairs.push((li, ri));
                }
            }
        }
        let _held = fl.hold(bytes)?;
        // A side kept as counts has no rows to decode; without a filter or an output of pairs
        // (semi, anti and mark joins), no pair is built either.
        let decode = |a: &Arranged, rows: &[(&[u8], i64)]| -> Result<Option<arrow::array::RecordBatch>> {
            if a.counts {
                return Ok(None);
            }
            Ok(Some(a.rows.decode(rows.iter().map(|(r, _)| *r))?))
        };
        let lb = decode(l, &c.left)?;
        let rb = decode(r, &c.right)?;
        let weights: Vec<i64> = c.pairs.iter().map(|(l, r)| c.left[*l as usize].1 * c.right[*r as usize].1).collect();
        let pairs = match (&lb, &rb) {
            (Some(lb), Some(rb))
                if self.filter.is_some()
                    || matches!(
                        self.join_type,
                        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
                    ) =>
            {
                let li = arrow::array::UInt32Array::from(c.pairs.iter().map(|p| p.0).collect::<Vec<_>>());
                let ri = arrow::array::UInt32Array::from(c.pairs.iter().map(|p| p.1).collect::<Vec<_>>());
                let mut columns: Vec<ArrayRef> =
                    lb.columns().iter().map(|a| take(a, &li, None)).collect::<std::result::Result<_, _>>()?;
                columns.extend(
                    rb.columns().iter().map(|a| take(a, &ri, None)).collect::<std::result::Result<Vec<_>, _>>()?,
                );
                Some(ZSet::new(batch_of(&self.pair_schema, columns, weights.len())?, weights))
            }
            _ => None,
        };
        let pass: Vec<bool> = match (&self.filter, &pairs) {
            (Some(f), Some(p)) if !p.is_empty() => mask(f, &p.batch)?.values().iter().collect(),
            _ => vec![true; c.pairs.len()],
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
        let rows_of = |b: &Option<arrow::array::RecordBatch>, c: &[(&[u8], i64)]| -> Result<ZSet> {
            let b = b.clone().ok_or_else(|| unsupported("Join", "an output of the side kept as counts"))?;
            Ok(ZSet::new(b, c.iter().map(|(_, w)| *w).collect()))
        };
        let mut parts = Vec::new();
        match self.join_type {
            Inner | Left | Right | Full => {
                let pairs = pairs.ok_or_else(|| unsupported("Join", "pairs of a side kept as counts"))?;
                parts.push(pairs.take(&passing)?.with_schema(self.schema.clone())?);
                if matches!(self.join_type, Left | Full) {
                    let z = rows_of(&lb, &c.left)?.take(&left_where(false))?;
                    parts.push(self.unmatched(true, &z.batch, z.weights)?);
                }
                if matches!(self.join_type, Right | Full) {
                    let z = rows_of(&rb, &c.right)?.take(&right_where(false))?;
                    parts.push(self.unmatched(false, &z.batch, z.weights)?);
                }
            }
            LeftSemi => parts.push(rows_of(&lb, &c.left)?.take(&left_where(true))?.with_schema(self.schema.clone())?),
            RightSemi => {
                parts.push(rows_of(&rb, &c.right)?.take(&right_where(true))?.with_schema(self.schema.clone())?)
            }
            LeftAnti => parts.push(rows_of(&lb, &c.left)?.take(&left_where(false))?.with_schema(self.schema.clone())?),
            RightAnti => {
                parts.push(rows_of(&rb, &c.right)?.take(&right_where(false))?.with_schema(self.schema.clone())?)
            }
            LeftMark => {
                let lz = rows_of(&lb, &c.left)?;
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
