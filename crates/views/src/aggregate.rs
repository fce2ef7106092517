//! Grouped and ungrouped aggregates, and `DISTINCT` (an aggregate without aggregate functions):
//! per group, the number of input rows and the state of one accumulator per aggregate.
//!
//! `count`, `sum` and `avg` use DataFusion's own retractable accumulators (the ones its sliding
//! windows use: `update_batch` for inserts, `retract_batch` for deletes), so results have exactly
//! DataFusion's types and rounding. Between pieces a group is not a live accumulator but its
//! state (`Accumulator::state`, e.g. a sum and a count) encoded as one row of an
//! [`Arrangement`] under the group's key, weighted by the group's row count: a piece loads the
//! groups it touches (decoded in one batch, merged into fresh accumulators), updates them and
//! stores them back (encoded in one batch). `min`, `max` and `count(DISTINCT)` keep a multiset of
//! the group's values in one ordered map for the operator, keyed by (group, aggregate, value) so
//! that a group's values are one range whose first is the minimum: a delete can remove the
//! current minimum, and the next one must be known. A group exists while its row count is above
//! zero; an ungrouped aggregate always has its one row (fresh accumulators when it has no rows).
//! The output change of a transaction is, for every group it touched, −(the group's row
//! before) +(its row after).

use crate::arrange::Arrangement;
use crate::compact::{Encoded, StateCodec};
use crate::error::{unsupported, Result};
use crate::flight::Flight;
use crate::node::{batch_of, eval, mask, query, Deltas, Emit, Node};
use crate::zset::{relax_nullability, RowCodec, ZSet};
use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{Accumulator, LogicalPlan};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How one aggregate is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// DataFusion's retractable accumulator.
    Retractable,
    /// The least value of a multiset.
    Min,
    /// The greatest value of a multiset.
    Max,
    /// The number of distinct non-NULL values of a multiset.
    CountDistinct,
}

/// One aggregate expression of the node.
pub(crate) struct AggSpec {
    pub(crate) func: Arc<AggregateFunctionExpr>,
    pub(crate) args: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) filter: Option<Arc<dyn PhysicalExpr>>,
    pub(crate) kind: Kind,
    /// Encodes the argument's values (multiset kinds).
    values: Option<RowCodec>,
    out_type: DataType,
}

impl AggSpec {
    pub(crate) fn new(
        func: Arc<AggregateFunctionExpr>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        input: &SchemaRef,
    ) -> Result<AggSpec> {
        let name = func.fun().name().to_ascii_lowercase();
        if !func.order_bys().is_empty() {
            return Err(unsupported("Aggregate", format!("{name} with ORDER BY in its arguments")));
        }
        let args = func.expressions();
        let kind = match (name.as_str(), func.is_distinct()) {
            ("count", true) if args.len() == 1 => Kind::CountDistinct,
            ("min", _) => Kind::Min,
            ("max", _) => Kind::Max,
            ("count" | "sum" | "avg" | "mean", false) => Kind::Retractable,
            (n, true) => {
                return Err(unsupported(
                    "Aggregate",
                    format!("{n}(DISTINCT ...): only count(DISTINCT x) is maintained"),
                ))
            }
            (n, false) => {
                return Err(unsupported(
                    "Aggregate",
                    format!("{n}: only count, sum, avg, min, max and count(DISTINCT) are maintained"),
                ))
            }
        };
        let values = match kind {
            Kind::Retractable => None,
            _ => {
                let t = args[0].data_type(input)?;
                Some(RowCodec::new(Arc::new(Schema::new(vec![Field::new("v", t, true)])))?)
            }
        };
        let out_type = func.field().data_type().clone();
        Ok(AggSpec { func, args, filter, kind, values, out_type })
    }

    /// A fresh accumulator of a retractable aggregate (None: a multiset aggregate, whose
    /// values live in the operator's `values`).
    fn fresh(&self) -> Result<Option<Box<dyn Accumulator>>> {
        Ok(match self.kind {
            Kind::Retractable => Some(self.func.create_sliding_accumulator()?),
            _ => None,
        })
    }
}

/// A group while a piece updates or reads it: its row count and its retractable accumulators,
/// rebuilt from their packed states.
struct Live {
    rows: i64,
    accs: Vec<Option<Box<dyn Accumulator>>>,
}

/// An aggregate node.
pub(crate) struct AggregateOp {
    input: Node,
    plan: LogicalPlan,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    groups_codec: Option<StateCodec>,
    aggs: Vec<AggSpec>,
    /// Each group's key with one row: its retractable accumulators' states (DataFusion's
    /// `Accumulator::state`, encoded by `states`), weighted by the group's row count. A group
    /// whose count reaches 0 is gone (an ungrouped aggregate's one row is then fresh).
    groups: Arrangement,
    /// Encodes the accumulators' states (None: no retractable aggregate).
    states: Option<StateCodec>,
    /// Each aggregate's columns in `states` (empty for multiset aggregates).
    state_cols: Vec<std::ops::Range<usize>>,
    /// The encoded states of fresh accumulators: what a new group's row is about.
    fresh_state: usize,
    /// The multiset aggregates' values: (group, aggregate, value) ([`value_key`]) → weight.
    values: BTreeMap<Box<[u8]>, i64>,
    /// The boxes of `values`' keys, by their size class.
    value_bytes: usize,
    schema: SchemaRef,
}

/// A multiset value's key: the group's key (length first), the aggregate, the value's own row
/// bytes; a group's values of one aggregate are one range, ordered as the values are.
fn value_key(group: &[u8], agg: usize, value: &[u8]) -> Box<[u8]> {
    let mut k = Vec::with_capacity(6 + group.len() + value.len());
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group);
    k.extend_from_slice(&(agg as u16).to_be_bytes());
    k.extend_from_slice(value);
    k.into_boxed_slice()
}

/// The input columns one transaction's update needs, evaluated once for the whole delta.
/// A group a transaction touched, with its output from before the transaction.
type Touched = (Box<[u8]>, Option<Vec<ScalarValue>>);

struct Evaluated {
    args: Vec<Vec<ArrayRef>>,
    passes: Vec<Option<BooleanArray>>,
    values: Vec<Option<arrow::row::Rows>>,
}

impl AggregateOp {
    pub(crate) fn new(
        input: Node,
        plan: LogicalPlan,
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        aggs: Vec<AggSpec>,
        schema: SchemaRef,
    ) -> Result<AggregateOp> {
        let input_schema = input.schema();
        let groups_codec = if group_exprs.is_empty() {
            None
        } else {
            let fields = group_exprs
                .iter()
                .enumerate()
                .map(|(i, e)| Ok(Field::new(format!("g{i}"), e.data_type(&input_schema)?, true)))
                .collect::<Result<Vec<_>>>()?;
            Some(StateCodec::new(Arc::new(Schema::new(fields)))?)
        };
        // The states' columns, from what fresh accumulators say their state is.
        let (mut fields, mut state_cols) = (Vec::new(), Vec::new());
        for (a, spec) in aggs.iter().enumerate() {
            let start = fields.len();
            if let Some(mut acc) = spec.fresh()? {
                for (j, v) in acc.state()?.iter().enumerate() {
                    fields.push(Field::new(format!("a{a}s{j}"), v.data_type(), true));
                }
            }
            state_cols.push(start..fields.len());
        }
        let states = (!fields.is_empty()).then(|| StateCodec::new(Arc::new(Schema::new(fields)))).transpose()?;
        let mut op = AggregateOp {
            input,
            plan,
            group_exprs,
            groups_codec,
            aggs,
            groups: Arrangement::new(),
            states,
            state_cols,
            fresh_state: 0,
            values: BTreeMap::new(),
            value_bytes: 0,
            schema: relax_nullability(&schema),
        };
        let mut fresh = vec![op.fresh()?];
        op.fresh_state = op.encode_states(&mut fresh)?.map_or(0, |rows| rows.row(0).len());
        Ok(op)
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub(crate) fn input(&self) -> &Node {
        &self.input
    }

    pub(crate) fn input_mut(&mut self) -> &mut Node {
        &mut self.input
    }

    pub(crate) fn describe(&self) -> String {
        let names: Vec<String> = self.aggs.iter().map(|a| format!("{}({:?})", a.func.fun().name(), a.kind)).collect();
        format!(
            "Aggregate by {} key(s) [{}]: state {} groups, {}",
            self.group_exprs.len(),
            names.join(", "),
            self.groups.len(),
            crate::format_bytes(self.own_bytes())
        )
    }

    /// Kept up to date group by group: a transaction costs what it touches, not every group.
    fn own_bytes(&self) -> usize {
        self.groups.bytes() + self.value_bytes + crate::mem::btree::<Box<[u8]>, i64>(self.values.len())
    }

    pub(crate) fn state_bytes(&self) -> usize {
        self.own_bytes() + self.input.state_bytes()
    }

    fn evaluate_inputs(&self, z: &ZSet) -> Result<(Vec<Box<[u8]>>, Evaluated)> {
        let keys: Vec<Box<[u8]>> = match &self.groups_codec {
            None => vec![Box::default(); z.len()],
            Some(codec) => {
                let columns = self.group_exprs.iter().map(|e| eval(e, &z.batch)).collect::<Result<Vec<_>>>()?;
                let columns = cast_all(columns, codec.schema())?;
                let rows = codec.encode(&columns)?;
                (0..z.len()).map(|i| Box::<[u8]>::from(rows.row(i))).collect()
            }
        };
        let mut ev = Evaluated { args: Vec::new(), passes: Vec::new(), values: Vec::new() };
        for a in &self.aggs {
            let args = a.args.iter().map(|e| eval(e, &z.batch)).collect::<Result<Vec<_>>>()?;
            let pass = a.filter.as_ref().map(|f| mask(f, &z.batch)).transpose()?;
            let values = match &a.values {
                Some(codec) => Some(codec.encode(&cast_all(vec![args[0].clone()], codec.schema())?)?),
                None => None,
            };
            ev.args.push(args);
            ev.passes.push(pass);
            ev.values.push(values);
        }
        Ok((keys, ev))
    }

    /// A group with no rows: fresh accumulators.
    fn fresh(&self) -> Result<Live> {
        Ok(Live { rows: 0, accs: self.aggs.iter().map(|a| a.fresh()).collect::<Result<Vec<_>>>()? })
    }

    /// The groups `keys` as they are, their accumulators rebuilt from their states (decoded
    /// in one batch, merged into fresh accumulators).
    fn load(&self, keys: &[Box<[u8]>]) -> Result<Vec<Live>> {
        let found: Vec<Option<(&[u8], i64)>> = keys.iter().map(|k| self.groups.get(k).next()).collect();
        let decoded = match &self.states {
            Some(codec) if found.iter().any(Option::is_some) => {
                Some(codec.decode(found.iter().flatten().map(|(r, _)| *r))?)
            }
            _ => None,
        };
        let mut lives = Vec::with_capacity(keys.len());
        let mut j = 0;
        for f in &found {
            let mut live = self.fresh()?;
            if let Some((_, rows)) = f {
                live.rows = *rows;
                if let Some(b) = &decoded {
                    for (acc, cols) in live.accs.iter_mut().zip(&self.state_cols) {
                        if let Some(acc) = acc {
                            let state: Vec<ArrayRef> =
                                b.columns()[cols.clone()].iter().map(|c| c.slice(j, 1)).collect();
                            acc.merge_batch(&state)?;
                        }
                    }
                }
                j += 1;
            }
            lives.push(live);
        }
        Ok(lives)
    }

    /// The accumulators' states of `lives`, encoded in one batch (None: nothing to encode).
    fn encode_states(&self, lives: &mut [Live]) -> Result<Option<Encoded>> {
        let Some(codec) = &self.states else { return Ok(None) };
        if lives.is_empty() {
            return Ok(None);
        }
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(lives.len()); codec.schema().fields().len()];
        for live in lives.iter_mut() {
            for (acc, cols) in live.accs.iter_mut().zip(&self.state_cols) {
                if let Some(acc) = acc {
                    for (c, v) in cols.clone().zip(acc.state()?) {
                        columns[c].push(v);
                    }
                }
            }
        }
        let arrays = columns.into_iter().map(ScalarValue::iter_to_array).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Some(codec.encode(&cast_all(arrays, codec.schema())?)?))
    }

    /// Writes `lives` back as the groups `keys` (a group of no rows is removed).
    fn store(&mut self, keys: &[Box<[u8]>], lives: &mut [Live]) -> Result<()> {
        let encoded = self.encode_states(lives)?;
        for (i, k) in keys.iter().enumerate() {
            let old = self.groups.get(k).next().map(|(r, w)| (Box::<[u8]>::from(r), w));
            if let Some((r, w)) = old {
                self.groups.add(k, &r, -w);
            }
            let row: &[u8] = encoded.as_ref().map_or(&[], |e| e.row(i));
            self.groups.add(k, row, lives[i].rows);
        }
        Ok(())
    }

    /// Adds the rows `idx` of the evaluated delta (weights `weights`) to the group `key`.
    fn update(&mut self, key: &[u8], live: &mut Live, idx: &[u32], weights: &[i64], ev: &Evaluated) -> Result<()> {
        live.rows += idx.iter().map(|&i| weights[i as usize]).sum::<i64>();
        if live.rows < 0 {
            let row = self.groups_codec.as_ref().map_or_else(|| "()".to_string(), |c| c.describe(key));
            return Err(crate::ViewError::AbsentRowDeleted {
                operator: "the aggregate's group".into(),
                row,
                count: live.rows,
            });
        }
        for a in 0..self.aggs.len() {
            let passes = |i: u32| ev.passes[a].as_ref().is_none_or(|p| p.value(i as usize));
            match &mut live.accs[a] {
                Some(acc) => {
                    let (mut ins, mut del) = (Vec::new(), Vec::new());
                    for &i in idx {
                        if !passes(i) {
                            continue;
                        }
                        let w = weights[i as usize];
                        let list = if w > 0 { &mut ins } else { &mut del };
                        for _ in 0..w.unsigned_abs() {
                            list.push(i);
                        }
                    }
                    if !ins.is_empty() {
                        acc.update_batch(&take_all(&ev.args[a], &ins)?)?;
                    }
                    if !del.is_empty() {
                        acc.retract_batch(&take_all(&ev.args[a], &del)?)?;
                    }
                }
                None => {
                    let rows = ev.values[a].as_ref().expect("multiset aggregates encode their values");
                    let arg = &ev.args[a][0];
                    for &i in idx {
                        if !passes(i) || arg.is_null(i as usize) {
                            continue;
                        }
                        let k = value_key(key, a, rows.row(i as usize).data());
                        let w = weights[i as usize];
                        match self.values.get_mut(&k) {
                            Some(c) => {
                                *c += w;
                                if *c == 0 {
                                    self.values.remove(&k);
                                    self.value_bytes -= crate::mem::boxed(k.len());
                                }
                            }
                            None => {
                                self.value_bytes += crate::mem::boxed(k.len());
                                self.values.insert(k, w);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The aggregate values of the groups `keys` (None: a group with no rows, unless it is the
    /// one row of an ungrouped aggregate).
    fn outputs(&self, keys: &[Box<[u8]>]) -> Result<Vec<Option<Vec<ScalarValue>>>> {
        let ungrouped = self.groups_codec.is_none();
        let mut lives = self.load(keys)?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, live) in keys.iter().zip(&mut lives) {
            if live.rows <= 0 && !ungrouped {
                out.push(None);
                continue;
            }
            let mut row = Vec::with_capacity(self.aggs.len());
            for (a, (spec, acc)) in self.aggs.iter().zip(live.accs.iter_mut()).enumerate() {
                let v = match acc {
                    Some(acc) => acc.evaluate()?,
                    None => {
                        let codec = spec.values.as_ref().expect("multiset aggregates encode their values");
                        let (from, to) = (value_key(key, a, &[]), value_key(key, a + 1, &[]));
                        let mut range = self.values.range::<[u8], _>((
                            std::ops::Bound::Included(&from[..]),
                            std::ops::Bound::Excluded(&to[..]),
                        ));
                        let pick = match spec.kind {
                            Kind::Min => range.next(),
                            Kind::Max => range.next_back(),
                            _ => None,
                        };
                        match (spec.kind, pick) {
                            (Kind::CountDistinct, _) => ScalarValue::Int64(Some(range.count() as i64)),
                            (_, Some((bytes, _))) => {
                                let b = codec.decode([&bytes[from.len()..]])?;
                                ScalarValue::try_from_array(b.column(0), 0)?
                            }
                            (_, None) => ScalarValue::try_from(&spec.out_type)?,
                        }
                    }
                };
                row.push(v);
            }
            out.push(Some(row));
        }
        Ok(out)
    }

    fn absorb(&mut self, z: &ZSet) -> Result<Vec<Box<[u8]>>> {
        let (keys, ev) = self.evaluate_inputs(z)?;
        self.absorb_evaluated(keys, &ev, &z.weights)
    }

    /// [`AggregateOp::absorb`] of rows whose group keys and arguments are evaluated already:
    /// the groups they touch are loaded, updated and stored back in one batch each way.
    fn absorb_evaluated(&mut self, keys: Vec<Box<[u8]>>, ev: &Evaluated, weights: &[i64]) -> Result<Vec<Box<[u8]>>> {
        let mut order: Vec<Box<[u8]>> = Vec::new();
        let mut by_key: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        for (i, k) in keys.into_iter().enumerate() {
            match by_key.get_mut(&k) {
                Some(v) => v.push(i as u32),
                None => {
                    order.push(k.clone());
                    by_key.insert(k, vec![i as u32]);
                }
            }
        }
        let mut lives = self.load(&order)?;
        for (k, live) in order.iter().zip(lives.iter_mut()) {
            self.update(k, live, &by_key[k], weights, ev)?;
        }
        self.store(&order, &mut lives)?;
        Ok(order)
    }

    pub(crate) async fn populate(&mut self, ctx: &SessionContext) -> Result<()> {
        self.input.populate(ctx).await?;
        let mut input = query(ctx, &self.plan, self.input.schema()).await?;
        // Each batch rewrites the groups it touches, leaving their old bytes dead in the arena:
        // it is rewritten as it goes, when the pool grants the copy of its live bytes.
        let pool = ctx.runtime_env().memory_pool.clone();
        let rewrite = MemoryConsumer::new("view population (an aggregate's groups rewritten)").register(&pool);
        while let Some(z) = futures::TryStreamExt::try_next(&mut input).await? {
            self.absorb(&z)?;
            self.groups.compact_if(|n| {
                let r = rewrite.new_empty();
                r.try_grow(n).ok().map(|()| r)
            });
        }
        Ok(())
    }

    /// Folds every piece of the input's change into the groups, remembering each touched
    /// group's output from before the transaction; then pushes, a piece of groups at a time,
    /// each touched group's old output retracted and its new one inserted. The input's change
    /// is never held whole: a join fanning out below an aggregate costs pieces, not its output.
    pub(crate) fn step(&mut self, deltas: &Deltas, fl: &Flight, emit: &mut Emit<'_>) -> Result<()> {
        let placeholder = Node::Constant { schema: self.input.schema() };
        let mut input = std::mem::replace(&mut self.input, placeholder);
        // Each touched group's output before the transaction, in the order first touched.
        let mut touched: Vec<Touched> = Vec::new();
        let mut seen: std::collections::HashSet<Box<[u8]>> = std::collections::HashSet::new();
        let mut held = fl.hold(0)?;
        let per_group = 64 + 48 * self.aggs.len();
        // What a group's states may take once updated (a sum's varint grows with it); a state
        // of unbounded width is taken at its fresh size.
        let state_max = self.states.as_ref().and_then(|c| c.max_row_len()).unwrap_or(0).max(self.fresh_state);
        let folded = input.step(deltas, fl, &mut |z| {
            let z = z.consolidate()?;
            if z.is_empty() {
                return Ok(());
            }
            let (keys, ev) = self.evaluate_inputs(&z)?;
            let mut first: Vec<Box<[u8]>> = Vec::new();
            let (mut new_groups, mut new_bytes, mut new_values) = (0, 0, 0);
            // Every group the piece touches is written again (a new record in the arena, the
            // old one left dead), its states perhaps longer than before.
            let mut in_piece: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
            for (i, k) in keys.iter().enumerate() {
                if z.weights[i] > 0 {
                    new_values += self.aggs.iter().filter(|a| a.kind != Kind::Retractable).count() * (k.len() + 64);
                }
                if self.groups.contains_key(k) {
                    if in_piece.insert(k) {
                        // Its record again, lengths included.
                        new_bytes += k.len() + state_max + 10;
                    }
                } else if z.weights[i] > 0 && in_piece.insert(k) {
                    new_groups += 1;
                    new_bytes += k.len() + state_max;
                }
                if seen.contains(k) {
                    continue;
                }
                held.grow(2 * (crate::mem::boxed(k.len()) + per_group))?;
                seen.insert(k.clone());
                first.push(k.clone());
            }
            drop(in_piece);
            fl.grow_state(self.groups.growth(new_groups, new_bytes) + new_values)?;
            for (k, before) in first.iter().zip(self.outputs(&first)?) {
                touched.push((k.clone(), before));
            }
            self.absorb_evaluated(keys, &ev, &z.weights)?;
            self.groups.compact_if(|n| fl.hold(n).ok());
            Ok(())
        });
        self.input = input;
        folded?;
        drop(seen);
        for part in touched.chunks((fl.piece_rows / 2).max(1)) {
            let bytes: usize = part.iter().map(|(k, _)| 2 * (k.len() + per_group)).sum();
            let _piece = fl.hold(bytes)?;
            let keys: Vec<Box<[u8]>> = part.iter().map(|(k, _)| k.clone()).collect();
            let mut rows: Vec<(Box<[u8]>, Vec<ScalarValue>, i64)> = Vec::new();
            for ((k, before), after) in part.iter().zip(self.outputs(&keys)?) {
                if let Some(v) = before {
                    rows.push((k.clone(), v.clone(), -1));
                }
                if let Some(v) = after {
                    rows.push((k.clone(), v, 1));
                }
            }
            let out = self.rows_to_zset(rows)?.consolidate()?;
            if !out.is_empty() {
                emit(out)?;
            }
        }
        Ok(())
    }

    fn rows_to_zset(&self, rows: Vec<(Box<[u8]>, Vec<ScalarValue>, i64)>) -> Result<ZSet> {
        let n = rows.len();
        let mut columns: Vec<ArrayRef> = match &self.groups_codec {
            Some(codec) => codec.decode(rows.iter().map(|r| r.0.as_ref()))?.columns().to_vec(),
            None => Vec::new(),
        };
        for a in 0..self.aggs.len() {
            let values: Vec<ScalarValue> = rows.iter().map(|r| r.1[a].clone()).collect();
            let array = if values.is_empty() {
                arrow::array::new_empty_array(&self.aggs[a].out_type)
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(array);
        }
        let weights = rows.iter().map(|r| r.2).collect();
        ZSet::new(batch_of(&self.schema, columns, n)?, weights).with_schema(self.schema.clone())
    }
}

fn take_all(columns: &[ArrayRef], idx: &[u32]) -> Result<Vec<ArrayRef>> {
    let idx = UInt32Array::from(idx.to_vec());
    Ok(columns.iter().map(|c| take(c, &idx, None)).collect::<std::result::Result<_, _>>()?)
}

fn cast_all(columns: Vec<ArrayRef>, schema: &SchemaRef) -> Result<Vec<ArrayRef>> {
    columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
        .collect()
}
