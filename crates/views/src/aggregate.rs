//! Grouped and ungrouped aggregates, and `DISTINCT` (an aggregate without aggregate functions):
//! per group, the number of input rows and one accumulator per aggregate.
//!
//! `count`, `sum` and `avg` use DataFusion's own retractable accumulators (the ones its sliding
//! windows use: `update_batch` for inserts, `retract_batch` for deletes), so results have exactly
//! DataFusion's types and rounding. `min`, `max` and `count(DISTINCT)` keep a multiset of the
//! group's values (ordered by their row encoding, so the first is the minimum): a delete can
//! remove the current minimum, and the next one must be known. A group exists while its row
//! count is above zero; an ungrouped aggregate always has its one row. The output change of a
//! transaction is, for every group it touched, −(the group's row before) +(its row after).

use crate::error::{unsupported, Result};
use crate::flight::Flight;
use crate::node::{batch_of, eval, mask, query, Deltas, Emit, Node};
use crate::zset::{relax_nullability, RowCodec, ZSet};
use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
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
    /// Bytes a fresh accumulator allocates (0 when jemalloc cannot say).
    fresh_bytes: usize,
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
        let mut spec = AggSpec { func, args, filter, kind, values, out_type, fresh_bytes: 0 };
        // What one fresh accumulator really allocates (DataFusion's `size()` leaves out parts of
        // some): measured once per aggregate, charged per group.
        let (_, bytes) = spillway_governor::jemalloc::allocated_by(|| spec.fresh());
        spec.fresh_bytes = bytes;
        Ok(spec)
    }

    fn fresh(&self) -> Result<Acc> {
        Ok(match self.kind {
            Kind::Retractable => Acc::Retractable(self.func.create_sliding_accumulator()?),
            _ => Acc::Multiset(BTreeMap::new()),
        })
    }
}

enum Acc {
    Retractable(Box<dyn Accumulator>),
    Multiset(BTreeMap<Box<[u8]>, i64>),
}

struct Group {
    rows: i64,
    accs: Vec<Acc>,
}

/// An aggregate node.
pub(crate) struct AggregateOp {
    input: Node,
    plan: LogicalPlan,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    groups_codec: Option<RowCodec>,
    aggs: Vec<AggSpec>,
    groups: HashMap<Box<[u8]>, Group>,
    value_bytes: usize,
    /// Bytes of the groups' keys, bookkeeping and accumulators ([`group_size`]).
    group_bytes: usize,
    schema: SchemaRef,
}

/// A group's bytes: its key, bookkeeping and retractable accumulators (multisets are counted in
/// `value_bytes` as values come and go).
fn group_size(key: &[u8], g: &Group, aggs: &[AggSpec]) -> usize {
    use crate::mem::{alloc_size, boxed};
    let accs: usize = g
        .accs
        .iter()
        .zip(aggs)
        .map(|(a, spec)| if let Acc::Retractable(a) = a { alloc_size(a.size()).max(spec.fresh_bytes) } else { 0 })
        .sum();
    boxed(key.len()) + boxed(g.accs.len() * std::mem::size_of::<Acc>()) + accs
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
            Some(RowCodec::new(Arc::new(Schema::new(fields)))?)
        };
        let mut op = AggregateOp {
            input,
            plan,
            group_exprs,
            groups_codec,
            aggs,
            groups: HashMap::new(),
            value_bytes: 0,
            group_bytes: 0,
            schema: relax_nullability(&schema),
        };
        if op.groups_codec.is_none() {
            let accs = op.aggs.iter().map(|a| a.fresh()).collect::<Result<Vec<_>>>()?;
            let g = Group { rows: 0, accs };
            op.group_bytes += group_size(&[], &g, &op.aggs);
            op.groups.insert(Box::default(), g);
        }
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
        self.group_bytes + self.value_bytes + crate::mem::table::<(Box<[u8]>, Group)>(self.groups.capacity())
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
                rows.iter().map(|r| Box::<[u8]>::from(r.as_ref())).collect()
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

    /// Adds the rows `idx` of the evaluated delta (weights `weights`) to `group`.
    fn update(&mut self, key: &[u8], idx: &[u32], weights: &[i64], ev: &Evaluated) -> Result<()> {
        let before = match self.groups.get(key) {
            Some(g) => group_size(key, g, &self.aggs),
            None => {
                let accs = self.aggs.iter().map(|a| a.fresh()).collect::<Result<Vec<_>>>()?;
                self.groups.insert(key.into(), Group { rows: 0, accs });
                0
            }
        };
        let group = self.groups.get_mut(key).expect("group was just inserted");
        group.rows += idx.iter().map(|&i| weights[i as usize]).sum::<i64>();
        if group.rows < 0 {
            let row = self.groups_codec.as_ref().map_or_else(|| "()".to_string(), |c| c.describe(key));
            return Err(crate::ViewError::AbsentRowDeleted {
                operator: "the aggregate's group".into(),
                row,
                count: group.rows,
            });
        }
        for (a, spec) in self.aggs.iter().enumerate() {
            let passes = |i: u32| ev.passes[a].as_ref().is_none_or(|p| p.value(i as usize));
            match &mut group.accs[a] {
                Acc::Retractable(acc) => {
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
                Acc::Multiset(set) => {
                    let rows = ev.values[a].as_ref().expect("multiset aggregates encode their values");
                    let arg = &ev.args[a][0];
                    for &i in idx {
                        if !passes(i) || arg.is_null(i as usize) {
                            continue;
                        }
                        let v = rows.row(i as usize);
                        let w = weights[i as usize];
                        let nodes = |n: usize| crate::mem::btree::<Box<[u8]>, i64>(n);
                        let len = set.len();
                        match set.get_mut(v.as_ref()) {
                            Some(c) => {
                                *c += w;
                                if *c == 0 {
                                    set.remove(v.as_ref());
                                    self.value_bytes -=
                                        crate::mem::boxed(v.as_ref().len()) + nodes(len) - nodes(len - 1);
                                }
                            }
                            None => {
                                set.insert(v.as_ref().into(), w);
                                self.value_bytes += crate::mem::boxed(v.as_ref().len()) + nodes(len + 1) - nodes(len);
                            }
                        }
                    }
                    let _ = spec;
                }
            }
        }
        self.group_bytes = self.group_bytes + group_size(key, group, &self.aggs) - before;
        Ok(())
    }

    /// The aggregate values of a group (None: the group has no rows and is not the one row of
    /// an ungrouped aggregate).
    fn output(&mut self, key: &[u8]) -> Result<Option<Vec<ScalarValue>>> {
        let ungrouped = self.groups_codec.is_none();
        let Some(group) = self.groups.get_mut(key) else { return Ok(None) };
        if group.rows <= 0 && !ungrouped {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.aggs.len());
        for (spec, acc) in self.aggs.iter().zip(group.accs.iter_mut()) {
            let v = match acc {
                Acc::Retractable(acc) => acc.evaluate()?,
                Acc::Multiset(set) => {
                    let codec = spec.values.as_ref().expect("multiset aggregates encode their values");
                    let pick = match spec.kind {
                        Kind::Min => set.keys().next(),
                        Kind::Max => set.keys().next_back(),
                        _ => None,
                    };
                    match (spec.kind, pick) {
                        (Kind::CountDistinct, _) => ScalarValue::Int64(Some(set.len() as i64)),
                        (_, Some(bytes)) => {
                            let b = codec.decode([bytes.as_ref()])?;
                            ScalarValue::try_from_array(b.column(0), 0)?
                        }
                        (_, None) => ScalarValue::try_from(&spec.out_type)?,
                    }
                }
            };
            out.push(v);
        }
        Ok(Some(out))
    }

    fn absorb(&mut self, z: &ZSet) -> Result<Vec<Box<[u8]>>> {
        let (keys, ev) = self.evaluate_inputs(z)?;
        self.absorb_evaluated(keys, &ev, &z.weights)
    }

    /// [`AggregateOp::absorb`] of rows whose group keys and arguments are evaluated already.
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
        for k in &order {
            self.update(k, &by_key[k], weights, ev)?;
        }
        Ok(order)
    }

    pub(crate) async fn populate(&mut self, ctx: &SessionContext) -> Result<()> {
        self.input.populate(ctx).await?;
        for z in query(ctx, &self.plan, self.input.schema()).await? {
            self.absorb(&z)?;
        }
        self.drop_empty();
        Ok(())
    }

    fn drop_empty(&mut self) {
        if self.groups_codec.is_some() {
            let (bytes, aggs) = (&mut self.group_bytes, &self.aggs);
            self.groups.retain(|k, g| {
                if g.rows == 0 {
                    *bytes -= group_size(k, g, aggs);
                }
                g.rows != 0
            });
        }
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
        let folded = input.step(deltas, fl, &mut |z| {
            let z = z.consolidate()?;
            if z.is_empty() {
                return Ok(());
            }
            let (keys, ev) = self.evaluate_inputs(&z)?;
            let mut growth = 0;
            for (i, k) in keys.iter().enumerate() {
                if seen.contains(k) {
                    continue;
                }
                held.grow(2 * (crate::mem::boxed(k.len()) + per_group))?;
                if !self.groups.contains_key(k) && z.weights[i] > 0 {
                    growth += self.new_group_bytes(k);
                }
                let before = self.output(k)?;
                seen.insert(k.clone());
                touched.push((k.clone(), before));
            }
            let multisets = self.aggs.iter().filter(|a| a.kind != Kind::Retractable).count();
            growth += multisets * 64 * z.weights.iter().filter(|w| **w > 0).count();
            fl.grow_state(growth)?;
            self.absorb_evaluated(keys, &ev, &z.weights)?;
            Ok(())
        });
        self.input = input;
        folded?;
        drop(seen);
        for part in touched.chunks((fl.piece_rows / 2).max(1)) {
            let bytes: usize = part.iter().map(|(k, _)| 2 * (k.len() + per_group)).sum();
            let _piece = fl.hold(bytes)?;
            let mut rows: Vec<(Box<[u8]>, Vec<ScalarValue>, i64)> = Vec::new();
            for (k, before) in part {
                if let Some(v) = before {
                    rows.push((k.clone(), v.clone(), -1));
                }
                if let Some(v) = self.output(k)? {
                    rows.push((k.clone(), v, 1));
                }
                if self.groups_codec.is_some() && self.groups.get(k).is_some_and(|g| g.rows == 0) {
                    if let Some(g) = self.groups.remove(k) {
                        self.group_bytes -= group_size(k, &g, &self.aggs);
                    }
                }
            }
            let out = self.rows_to_zset(rows)?.consolidate()?;
            if !out.is_empty() {
                emit(out)?;
            }
        }
        Ok(())
    }

    /// What a new group of key `key` costs: its key, its accumulators, its slot in the table.
    fn new_group_bytes(&self, key: &[u8]) -> usize {
        use crate::mem::boxed;
        let fresh: usize = self.aggs.iter().map(|a| a.fresh_bytes).sum();
        boxed(key.len())
            + boxed(self.aggs.len() * std::mem::size_of::<Acc>())
            + fresh
            + 2 * std::mem::size_of::<(Box<[u8]>, Group)>()
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
