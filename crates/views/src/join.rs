//! Joins: keyed state of their inputs (each side's rows, by join key, with their multiplicity),
//! only where it is needed.
//!
//! An inner join applies the bilinear rule Δ(A⋈B) = ΔA⋈B + A'⋈ΔB (A' = A + ΔA), which is
//! ΔA⋈B + A⋈ΔB + ΔA⋈ΔB. A left outer, semi, anti or mark join is linear in its left side too
//! (each left row's output depends only on the right rows under its key), so a left change is
//! joined with the right state alone; a right change is not linear (it decides whether left rows
//! have a match): for every key it touches, the join's output for that key is computed before
//! and after it, from the left rows under the key, and the difference is the output change. The
//! mirror holds for right joins; a full join is computed before and after for both sides. Rows
//! whose key is NULL never match (unless the join says NULL equals NULL, as `INTERSECT` does):
//! they are not kept, and pass straight through on the sides an outer or anti join preserves.
//!
//! **Which rows are kept.** A side's rows are read only when the other side changes; so a side
//! opposite one that never changes keeps nothing (the tested side of a semi, anti, mark or outer
//! join, and both sides of a full join, are always kept, since their own changes are computed
//! before and after). A side whose input is an inner join on the same key (through filters,
//! projections and renames) keeps nothing either: its rows under a key are **derived** when they
//! are read, from that join's two kept sides under the key (`A(k) ⋈ B(k)`, its filter, then the
//! operators between), as a delta join would. A left-deep chain or a semi join over a join on
//! one key thus stores its inputs once, not again as the join's output.
//!
//! **How rows are kept.** A kept row leaves out the columns its join key already holds (a key
//! that is a plain column of the key's own type): `l_orderkey` is stored once, as the key, not
//! again in the row, and put back when the row is decoded ([`SideRows`]). The rest is encoded
//! compactly for equality, not order ([`crate::compact`]).

use crate::arrange::Arrangement;
use crate::compact::{Encoded, StateCodec};
use crate::error::{unsupported, Result};
use crate::flight::{Flight, Held};
use crate::node::{batch_of, eval, filter_zset, mask, query, Deltas, Emit, Node};
use crate::zset::{relax_nullability, RowBytes, ZSet};
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
    /// Whether its rows are read: not when the other side never changes (and this side's own
    /// changes are linear), since only the other side's changes read them.
    keep: bool,
    /// Whether its rows, read, are derived from the inner join below on the same key instead
    /// of kept here (see the module's doc).
    derive: bool,
}

impl Side {
    pub(crate) fn new(node: Node, plan: LogicalPlan, keys: Vec<Arc<dyn PhysicalExpr>>) -> Result<Side> {
        let rows = SideRows::new(node.schema(), &keys, None)?;
        let arr = Arranged { keys, rows, state: Arrangement::new(), counts: false };
        Ok(Side { node, plan, arr, keep: true, derive: false })
    }

    /// Whether its rows are held in its own arrangement.
    fn stores(&self) -> bool {
        self.keep && !self.derive
    }
}

/// How join keys of `types` are encoded (compactly: they are only compared for equality).
fn key_codec(types: &[DataType]) -> Result<StateCodec> {
    let fields: Vec<Field> =
        types.iter().enumerate().map(|(i, t)| Field::new(format!("k{i}"), t.clone(), true)).collect();
    StateCodec::new(Arc::new(Schema::new(fields)))
}

/// The column each of `keys` reads, when every one is a plain column.
fn key_columns(keys: &[Arc<dyn PhysicalExpr>]) -> Option<Vec<usize>> {
    keys.iter().map(|k| k.downcast_ref::<datafusion::physical_expr::expressions::Column>().map(|c| c.index())).collect()
}

/// The side of a join type whose changes are linear, each row's output depending only on the
/// other side's rows under its key (`None`: both sides, for an inner join; neither, for a full
/// join, is told apart by the caller).
fn linear_side(join_type: JoinType) -> Option<bool> {
    use JoinType::*;
    match join_type {
        Left | LeftSemi | LeftAnti | LeftMark => Some(true),
        Right | RightSemi | RightAnti | RightMark => Some(false),
        Inner | Full => None,
    }
}

/// One side's rows as a join reads them: its own arrangement, or rows listed for the keys at
/// hand (a change's rows, or rows derived from the inner join below).
enum Probe<'a> {
    State(&'a Arranged),
    Listed(&'a Arranged, Listed),
}

/// Rows (encoded with a side's codec) grouped by key.
struct Listed {
    rows: Encoded,
    by_key: std::collections::HashMap<Box<[u8]>, Vec<(u32, i64)>>,
    /// The keys, in the order first seen.
    keys: Vec<Box<[u8]>>,
}

impl Listed {
    /// Row `i` of `rows` under `keys[i]` with `weights[i]` (rows with no key left out).
    fn new(keys: Vec<Option<RowBytes>>, rows: Encoded, weights: &[i64]) -> Listed {
        let mut by_key: std::collections::HashMap<Box<[u8]>, Vec<(u32, i64)>> = Default::default();
        let mut order = Vec::new();
        for (i, k) in keys.into_iter().enumerate() {
            let Some(k) = k else { continue };
            by_key
                .entry(k)
                .or_insert_with_key(|k| {
                    order.push(k.clone());
                    Vec::new()
                })
                .push((i as u32, weights[i]));
        }
        Listed { rows, by_key, keys: order }
    }
}

impl<'a> Probe<'a> {
    fn arranged(&self) -> &'a Arranged {
        match self {
            Probe::State(a) | Probe::Listed(a, _) => a,
        }
    }

    /// The rows under `key` with their weights.
    fn get<'p>(&'p self, key: &[u8]) -> Matches<'p> {
        match self {
            Probe::State(a) => Matches::State(a.state.get(key)),
            Probe::Listed(_, l) => match l.by_key.get(key) {
                Some(v) => Matches::Listed(v.iter(), &l.rows),
                None => Matches::Listed([].iter(), &l.rows),
            },
        }
    }
}

/// The rows of a [`Probe`] under one key.
enum Matches<'p> {
    State(crate::arrange::Group<'p>),
    Listed(std::slice::Iter<'p, (u32, i64)>, &'p Encoded),
}

impl<'p> Iterator for Matches<'p> {
    type Item = (&'p [u8], i64);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Matches::State(g) => g.next(),
            Matches::Listed(it, rows) => it.next().map(|&(i, w)| (rows.row(i as usize), w)),
        }
    }
}

/// How a side's rows are encoded: every column but those its join key holds as they are,
/// which are put back from the key when a row is decoded.
struct SideRows {
    /// The side's schema (nullable, as decoded batches are).
    schema: SchemaRef,
    /// The columns encoded in a row, by index in `schema`.
    stored: Vec<usize>,
    codec: StateCodec,
    /// The key's codec, and for each column left to the key, its index in `schema` and the
    /// key column holding it (none when no column is left out).
    keys: Option<(StateCodec, Vec<(usize, usize)>)>,
}

impl SideRows {
    /// Rows of `schema` joined on `keys`. With `key_types` (the types keys are encoded as), a
    /// key that is a plain column of its key's type is left out of the rows.
    fn new(schema: SchemaRef, keys: &[Arc<dyn PhysicalExpr>], key_types: Option<&[DataType]>) -> Result<SideRows> {
        let mut from_key: Vec<(usize, usize)> = Vec::new();
        if let Some(types) = key_types {
            for (k, (e, t)) in keys.iter().zip(types).enumerate() {
                let Some(c) = e.downcast_ref::<datafusion::physical_expr::expressions::Column>() else { continue };
                let c = c.index();
                // A dictionary comes back from the row format as its values' type.
                let exact = schema.field(c).data_type() == t && !matches!(t, DataType::Dictionary(..));
                if exact && !from_key.iter().any(|&(col, _)| col == c) {
                    from_key.push((c, k));
                }
            }
        }
        let stored: Vec<usize> =
            (0..schema.fields().len()).filter(|c| !from_key.iter().any(|&(col, _)| col == *c)).collect();
        let codec = StateCodec::new(Arc::new(schema.project(&stored)?))?;
        let keys = match (from_key.is_empty(), key_types) {
            (false, Some(types)) => Some((key_codec(types)?, from_key)),
            _ => None,
        };
        Ok(SideRows { schema: relax_nullability(&schema), stored, codec, keys })
    }

    /// The stored part of every row of `batch` (of the side's schema).
    fn encode_batch(&self, batch: &arrow::array::RecordBatch) -> Result<Encoded> {
        if self.keys.is_none() {
            return self.codec.encode_batch(batch);
        }
        self.codec.encode_batch(&batch.project(&self.stored)?)
    }

    /// The rows `(key, stored part)` as a batch of the side's schema.
    fn decode<'a>(&self, rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<arrow::array::RecordBatch> {
        let Some((keys, from_key)) = &self.keys else {
            return self.codec.decode(rows.into_iter().map(|(_, r)| r));
        };
        let (ks, rs): (Vec<&[u8]>, Vec<&[u8]>) = rows.into_iter().unzip();
        let n = rs.len();
        let stored = self.codec.decode(rs)?;
        let keys = keys.decode(ks)?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut next = stored.columns().iter();
        for c in 0..self.schema.fields().len() {
            match from_key.iter().find(|&&(col, _)| col == c) {
                Some(&(_, k)) => columns.push(keys.column(k).clone()),
                None => columns.push(next.next().cloned().ok_or_else(|| unsupported("Join", "a row's columns"))?),
            }
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
        Ok(arrow::array::RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?)
    }

    /// At most the bytes a row (`key` and `row` bytes long) takes decoded, key columns included.
    fn decoded_bound(&self, key: usize, row: usize) -> usize {
        self.codec.decoded_bound(row) + self.keys.as_ref().map_or(0, |(k, _)| k.decoded_bound(key))
    }

    /// One row, `(column=value, ...)`, for error messages.
    fn describe(&self, key: &[u8], row: &[u8]) -> String {
        match self.decode([(key, row)]) {
            Ok(b) => crate::zset::describe_row(&b),
            Err(_) => "(a row)".into(),
        }
    }
}

/// A side's rows by join key, each with its multiplicity.
struct Arranged {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    rows: SideRows,
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
    keys: StateCodec,
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
    /// `(key, row, weight)`.
    left: Vec<(&'a [u8], &'a [u8], i64)>,
    right: Vec<(&'a [u8], &'a [u8], i64)>,
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
    /// Decoded bytes of the pairs, at most: what the decoded piece is reserved as.
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
        let keys = key_codec(&key_types)?;
        let mut fields: Vec<_> = left_schema.fields().iter().cloned().collect();
        fields.extend(right_schema.fields().iter().cloned());
        let pair_schema = relax_nullability(&Arc::new(Schema::new(fields)));
        if matches!(join_type, JoinType::RightMark) {
            return Err(unsupported("Join", "a right mark join"));
        }
        let (mut left, mut right) = (left, right);
        for side in [&mut left, &mut right] {
            side.arr.rows = SideRows::new(side.node.schema(), &side.arr.keys, Some(&key_types))?;
        }
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
            if s.keep && s.derive {
                "none kept (derived from the inner join below on the same key)".to_string()
            } else if s.keep && s.arr.counts {
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

    /// See [`Node::unchanging`]: decides which sides keep their rows (see the module's doc):
    /// a side opposite one that reads only `tables` (or nothing at all) keeps none, and a side
    /// whose rows can be derived from the inner join below keeps none either.
    pub(crate) fn unchanging(&mut self, tables: &std::collections::BTreeSet<String>) {
        self.left.node.unchanging(tables);
        self.right.node.unchanging(tables);
        let changes = |n: &Node| {
            let mut reads = std::collections::BTreeSet::new();
            n.reads(&mut reads);
            !reads.is_subset(tables)
        };
        let (lc, rc) = (changes(&self.left.node), changes(&self.right.node));
        let jt = self.spec.join_type;
        (self.left.keep, self.right.keep) = match (jt, linear_side(jt)) {
            (JoinType::Inner, _) => (rc, lc),
            (_, Some(true)) => (rc, true),
            (_, Some(false)) => (true, lc),
            _ => (true, true),
        };
        let key_types = &self.spec.key_types;
        // A side the join reads only under keys of the other side's changes, never before and
        // after its own: an inner join's sides, a linear side.
        let derivable = |s: &Side, left: bool| {
            s.keep
                && (jt == JoinType::Inner || linear_side(jt) == Some(left))
                && key_columns(&s.arr.keys).is_some_and(|cols| s.node.derivable(&cols, key_types))
        };
        self.left.derive = derivable(&self.left, true);
        self.right.derive = derivable(&self.right, false);
    }

    /// Whether this join's output rows whose columns `cols` equal a key (encoded as
    /// `key_types`) can be derived from its state: an inner join keeping both sides, whose
    /// join key those columns are, in order.
    pub(crate) fn derivable(&self, cols: &[usize], key_types: &[DataType]) -> bool {
        let (Some(lk), Some(rk)) = (key_columns(&self.left.arr.keys), key_columns(&self.right.arr.keys)) else {
            return false;
        };
        let nl = self.spec.left_schema.fields().len();
        self.spec.join_type == JoinType::Inner
            && self.left.stores()
            && self.right.stores()
            && !cols.is_empty()
            && key_types == self.spec.key_types.as_slice()
            && cols.len() == lk.len()
            && cols.iter().enumerate().all(|(i, &c)| c == lk[i] || c == nl + rk[i])
    }

    /// This join's current output rows under `keys` (join keys), derived from both sides'
    /// state: `A(k) ⋈ B(k)` for each key, through its filter. Their bytes are reserved in
    /// `held` before they are built.
    pub(crate) fn derive(&self, keys: &[Box<[u8]>], held: &mut Held<'_>) -> Result<ZSet> {
        let (mut ls, mut rs, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes = 0usize;
        let (lr, rr) = (&self.left.arr.rows, &self.right.arr.rows);
        for k in keys {
            let left: Vec<(&[u8], i64)> = self.left.arr.state.get(k).collect();
            for (r, rw) in self.right.arr.state.get(k) {
                for &(l, lw) in &left {
                    ls.push((&k[..], l));
                    rs.push((&k[..], r));
                    weights.push(lw * rw);
                    bytes += lr.decoded_bound(k.len(), l.len()) + rr.decoded_bound(k.len(), r.len()) + 24;
                }
            }
        }
        // The pairs' references, their decoded columns and the filter's copy.
        held.grow(2 * bytes)?;
        let l = self.left.arr.rows.decode(ls)?;
        let r = self.right.arr.rows.decode(rs)?;
        let mut columns = l.columns().to_vec();
        columns.extend(r.columns().iter().cloned());
        let pairs = ZSet::new(batch_of(&self.spec.pair_schema, columns, weights.len())?, weights)
            .with_schema(self.spec.pair_schema.clone())?;
        let out = match &self.spec.filter {
            Some(f) => filter_zset(&pairs, f)?,
            None => pairs,
        };
        out.with_schema(self.spec.schema.clone())
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
        for (side, left) in [(&mut self.left, true), (&mut self.right, false)] {
            if !side.stores() {
                continue;
            }
            let mut input = query(ctx, &side.plan, side.node.schema()).await?;
            while let Some(z) = futures::TryStreamExt::try_next(&mut input).await? {
                self.spec.absorb(&mut side.arr, left, &z, None)?;
            }
        }
        Ok(())
    }

    /// The left input's change, a piece at a time, then the right's: each piece's output is
    /// pushed (in pieces) before the piece enters its side's state, so that the right side's
    /// pieces meet the left state with the whole left change in it (the bilinear rule, or the
    /// per-key rule of outer, semi, anti and mark joins, applied piece by piece). A side
    /// derived from the join below reads that join when it is complete: the right side's
    /// before the right input steps, the left side's once the left input has stepped.
    pub(crate) fn step(&mut self, deltas: &Deltas, fl: &Flight, emit: &mut Emit<'_>) -> Result<()> {
        let JoinOp { left, right, spec } = self;
        let stores = left.stores();
        left.node.step(deltas, fl, &mut |d| {
            let d = d.consolidate()?;
            spec.piece(true, stores, &d, &mut left.arr, right, fl, emit)
        })?;
        let stores = right.stores();
        right.node.step(deltas, fl, &mut |d| {
            let d = d.consolidate()?;
            spec.piece(false, stores, &d, &mut right.arr, left, fl, emit)
        })
    }
}

impl Spec {
    /// One piece `d` of side `is_left`'s change: its output pushed, then `d` absorbed into
    /// `mine` when that side `stores` its rows; `other` is the other side.
    #[allow(clippy::too_many_arguments)]
    fn piece(
        &self,
        is_left: bool,
        stores: bool,
        d: &ZSet,
        mine: &mut Arranged,
        other: &Side,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        if d.is_empty() {
            return Ok(());
        }
        match self.join_type {
            JoinType::Inner => self.delta_pairs(is_left, d, mine, other, fl, emit)?,
            t if linear_side(t) == Some(is_left) => self.linear(is_left, d, mine, other, fl, emit)?,
            // The tested side of a semi, anti, mark or outer join, or a full join's: kept.
            _ => return self.by_key(is_left, d, mine, other, fl, emit),
        }
        if stores {
            self.absorb(mine, is_left, d, Some(fl))?;
        }
        Ok(())
    }

    /// How the join reads `side` under `keys`: its arrangement, or, derived, its rows under
    /// them built from the join below (reserved in `held`).
    fn probe<'s>(&self, side: &'s Side, keys: &[Box<[u8]>], held: &mut Held<'_>) -> Result<Probe<'s>> {
        if !side.derive {
            return Ok(Probe::State(&side.arr));
        }
        let z = side.node.derive(keys, held)?;
        // Their encoding, its keys and the lists by key.
        held.grow(2 * z.slice_bytes() + 64 * z.len())?;
        let (zk, rows) = self.encode(&side.arr, &z)?;
        Ok(Probe::Listed(&side.arr, Listed::new(zk, rows, &z.weights)))
    }

    /// Join keys of every row of `z` (None: a NULL in the key, which matches nothing) and the
    /// rows' own encoding.
    fn encode(&self, side: &Arranged, z: &ZSet) -> Result<(Vec<Option<RowBytes>>, Encoded)> {
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
                    .then(|| keys.as_ref().map_or_else(Box::default, |k| Box::<[u8]>::from(k.row(i))))
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
                    bytes += k.len() + side.kept(rows.row(i)).len();
                }
            }
            fl.grow_state(side.state.growth(n, bytes))?;
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(k) = k {
                let row = side.kept(rows.row(i));
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
                let count = side.state.weight(k, side.kept(row));
                if count < 0 {
                    return Err(crate::ViewError::AbsentRowDeleted {
                        operator: format!("the join's {} input", if left { "left" } else { "right" }),
                        row: side.rows.describe(k, row.as_ref()),
                        count,
                    });
                }
            }
        }
        Ok(())
    }

    /// The inner join of change `d` (side `is_left`) with the other side's rows, pushed in
    /// pieces of at most [`crate::flight::PIECE_ROWS`] pairs, each reserved before it is decoded.
    fn delta_pairs(
        &self,
        is_left: bool,
        d: &ZSet,
        mine: &Arranged,
        other: &Side,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let (keys, rows) = self.encode(mine, d)?;
        let mut held = fl.hold(0)?;
        let touched = if other.derive { distinct(&keys) } else { Vec::new() };
        let other = self.probe(other, &touched, &mut held)?;
        let mut piece = PairPiece::default();
        let others = &other.arranged().rows;
        for (i, k) in keys.iter().enumerate() {
            let Some(k) = k else { continue };
            let row_len = mine.rows.decoded_bound(k.len(), rows.row(i).len());
            for (r, w) in other.get(k) {
                piece.changed.push(i as u32);
                piece.other.push(r);
                piece.weights.push(d.weights[i] * w);
                piece.bytes += row_len + others.decoded_bound(k.len(), r.len()) + 8;
                if piece.weights.len() >= fl.piece_rows {
                    self.push_pairs(
                        is_left,
                        (&keys, &rows),
                        mine,
                        other.arranged(),
                        std::mem::take(&mut piece),
                        fl,
                        emit,
                    )?;
                }
            }
        }
        self.push_pairs(is_left, (&keys, &rows), mine, other.arranged(), piece, fl, emit)
    }

    /// Decodes one piece of pairs (its bytes reserved first), filters it, pushes it.
    #[allow(clippy::too_many_arguments)]
    fn push_pairs(
        &self,
        is_left: bool,
        (keys, rows): (&[Option<RowBytes>], &Encoded),
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
        // Every pair's changed row has a key (rows without one pair with nothing).
        let key = |i: u32| keys[i as usize].as_deref().unwrap_or_default();
        let changed = mine.rows.decode(piece.changed.iter().map(|&i| (key(i), rows.row(i as usize))))?;
        let others = other.rows.decode(piece.changed.iter().zip(&piece.other).map(|(&i, r)| (key(i), *r)))?;
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

    /// A change `d` of the linear side (a left join's left side, ...): each of its rows'
    /// output from the other side's rows under its key, pushed a group of keys at a time (at
    /// most about [`crate::flight::PIECE_ROWS`] candidate pairs each).
    fn linear(
        &self,
        is_left: bool,
        d: &ZSet,
        mine: &Arranged,
        other: &Side,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        // The change's encoding, its keys and the lists by key.
        let mut held = fl.hold(2 * d.slice_bytes() + 64 * d.len())?;
        let (dk, rows) = self.encode(mine, d)?;
        let nulls: Vec<u32> = dk.iter().enumerate().filter(|(_, k)| k.is_none()).map(|(i, _)| i as u32).collect();
        let mut listed = Listed::new(dk, rows, &d.weights);
        let other = self.probe(other, &listed.keys, &mut held)?;
        let keys = std::mem::take(&mut listed.keys);
        let mine = Probe::Listed(mine, listed);
        let (mut start, mut pairs) = (0, 0usize);
        for (i, k) in keys.iter().enumerate() {
            pairs += mine.get(k).count() * other.get(k).count().max(1);
            if pairs >= fl.piece_rows || i + 1 == keys.len() {
                let group = &keys[start..=i];
                let out = if is_left {
                    self.output_for(&mine, &other, group, fl)?
                } else {
                    self.output_for(&other, &mine, group, fl)?
                };
                if !out.is_empty() {
                    emit(out)?;
                }
                (start, pairs) = (i + 1, 0);
            }
        }
        // Rows with a NULL key: unmatched by construction.
        if !nulls.is_empty() {
            let z = d.take(&nulls)?;
            let out = self.unmatched(is_left, &z.batch, z.weights)?;
            if !out.is_empty() {
                emit(out)?;
            }
        }
        Ok(())
    }

    /// The tested side of a semi, anti, mark or outer join, or either side of a full join:
    /// for every key piece `d` touches, the join's output for it before and after `d` enters
    /// `mine`; the difference is pushed.
    fn by_key(
        &self,
        is_left: bool,
        d: &ZSet,
        mine: &mut Arranged,
        other: &Side,
        fl: &Flight,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let (dk, _) = self.encode(mine, d)?;
        let touched = distinct(&dk);
        let mut other_held = fl.hold(0)?;
        let other = self.probe(other, &touched, &mut other_held)?;
        let before = {
            let mine = Probe::State(&*mine);
            if is_left {
                self.output_for(&mine, &other, &touched, fl)?
            } else {
                self.output_for(&other, &mine, &touched, fl)?
            }
        };
        let before_held = fl.hold(before.slice_bytes())?;
        self.absorb(mine, is_left, d, Some(fl))?;
        let after = {
            let mine = Probe::State(&*mine);
            if is_left {
                self.output_for(&mine, &other, &touched, fl)?
            } else {
                self.output_for(&other, &mine, &touched, fl)?
            }
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

    /// The join's whole output for the rows under `keys`, from the rows `l` and `r` read
    /// under them (its candidates reserved in `fl` while it is built).
    fn output_for(&self, l: &Probe<'_>, r: &Probe<'_>, keys: &[Box<[u8]>], fl: &Flight) -> Result<ZSet> {
        let mut c = Candidates::default();
        let mut bytes = 0usize;
        for k in keys {
            let l0 = c.left.len() as u32;
            let r0 = c.right.len() as u32;
            c.left.extend(l.get(k).map(|(row, w)| (&k[..], row, w)));
            c.right.extend(r.get(k).map(|(row, w)| (&k[..], row, w)));
            let (ln, rn) = (c.left.len() - l0 as usize, c.right.len() - r0 as usize);
            let (la, ra) = (&l.arranged().rows, &r.arranged().rows);
            let lb: usize = c.left[l0 as usize..].iter().map(|(k, r, _)| la.decoded_bound(k.len(), r.len()) + 8).sum();
            let rb: usize = c.right[r0 as usize..].iter().map(|(k, r, _)| ra.decoded_bound(k.len(), r.len()) + 8).sum();
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
        let decode = |a: &Probe<'_>, rows: &[(&[u8], &[u8], i64)]| -> Result<Option<arrow::array::RecordBatch>> {
            let a = a.arranged();
            if a.counts {
                return Ok(None);
            }
            Ok(Some(a.rows.decode(rows.iter().map(|(k, r, _)| (*k, *r)))?))
        };
        let lb = decode(l, &c.left)?;
        let rb = decode(r, &c.right)?;
        let weights: Vec<i64> = c.pairs.iter().map(|(l, r)| c.left[*l as usize].2 * c.right[*r as usize].2).collect();
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
        let rows_of = |b: &Option<arrow::array::RecordBatch>, c: &[(&[u8], &[u8], i64)]| -> Result<ZSet> {
            let b = b.clone().ok_or_else(|| unsupported("Join", "an output of the side kept as counts"))?;
            Ok(ZSet::new(b, c.iter().map(|(_, _, w)| *w).collect()))
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

/// The distinct keys of `keys` (NULL keys left out), in the order first seen.
fn distinct(keys: &[Option<RowBytes>]) -> Vec<Box<[u8]>> {
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut out = Vec::new();
    for k in keys.iter().flatten() {
        if seen.insert(k) {
            out.push(k.clone());
        }
    }
    out
}

fn nulls(schema: &SchemaRef, n: usize) -> Vec<ArrayRef> {
    schema.fields().iter().map(|f| new_null_array(f.data_type(), n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray};
    use datafusion::physical_expr::expressions::Column;

    /// A key that is a plain column of its key's type is kept once, in the key: the stored row
    /// leaves it out and decoding puts it back; a key cast to another type stays in the row.
    #[test]
    fn a_row_leaves_out_the_columns_its_key_holds() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
            Field::new("small", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc")])),
                Arc::new(Int64Array::from(vec![7, -1, 1 << 40])),
                Arc::new(Int32Array::from(vec![Some(3), Some(4), None])),
            ],
        )
        .unwrap();
        let keys: Vec<Arc<dyn PhysicalExpr>> = vec![Arc::new(Column::new("id", 1)), Arc::new(Column::new("small", 2))];
        let key_types = [DataType::Int64, DataType::Int64];
        let rows = SideRows::new(schema.clone(), &keys, Some(&key_types)).unwrap();
        let whole = SideRows::new(schema.clone(), &keys, None).unwrap();
        let key_codec = key_codec(&key_types).unwrap();
        let key_columns = [batch.column(1).clone(), arrow::compute::cast(batch.column(2), &DataType::Int64).unwrap()];
        let encoded_keys = key_codec.encode(&key_columns).unwrap();
        let stored = rows.encode_batch(&batch).unwrap();
        let full = whole.encode_batch(&batch).unwrap();
        for i in 0..3 {
            // The Int64 key is not repeated in the row.
            assert!(stored.row(i).len() < full.row(i).len());
        }
        let back = rows.decode((0..3).map(|i| (encoded_keys.row(i), stored.row(i)))).unwrap();
        assert_eq!(back.columns(), batch.columns());
        assert_eq!(rows.describe(encoded_keys.row(0), stored.row(0)), "(s=a, id=7, small=3)");
    }
}
