//! The operator graph a view is lowered to, and its stateless operators: scans of a table's
//! changes, filters, projections, renames, unions and constant relations. The stateful ones
//! (joins, aggregates, top-n) live in their own modules.

use crate::aggregate::AggregateOp;
use crate::error::Result;
use crate::flight::Flight;
use crate::join::JoinOp;
use crate::topn::TopNOp;
use crate::zset::ZSet;
use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use futures::TryStreamExt;

use std::collections::HashMap;
use std::sync::Arc;

/// One transaction's changes, by table (or upstream view) name, each in that table's schema.
pub type Deltas = HashMap<String, ZSet>;

/// Where a node pushes its output change, a piece at a time.
pub(crate) type Emit<'e> = dyn FnMut(ZSet) -> Result<()> + 'e;

/// `z` cut into pieces of at most `rows` rows (slices: no copy).
pub(crate) fn pieces(z: &ZSet, rows: usize) -> impl Iterator<Item = ZSet> + '_ {
    (0..z.len()).step_by(rows.max(1)).map(move |start| {
        let n = rows.max(1).min(z.len() - start);
        ZSet::new(z.batch.slice(start, n), z.weights[start..start + n].to_vec())
    })
}

/// A node of a view's operator graph.
pub(crate) enum Node {
    /// Changes of a table: its pushed-down filters, then its projection.
    Scan { table: String, filters: Vec<Arc<dyn PhysicalExpr>>, projection: Option<Vec<usize>>, schema: SchemaRef },
    /// A relation that never changes (`VALUES`, an empty relation).
    Constant { schema: SchemaRef },
    /// Rows whose predicate is true.
    Filter { input: Box<Node>, predicate: Arc<dyn PhysicalExpr>, schema: SchemaRef },
    /// Expressions of each row.
    Project { input: Box<Node>, exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef },
    /// The same rows under another schema (`SubqueryAlias`, `ORDER BY` without a limit).
    Rename { input: Box<Node>, schema: SchemaRef, what: &'static str },
    /// `UNION ALL`.
    Union { inputs: Vec<Node>, schema: SchemaRef },
    /// Joins of every kind: keyed state of both sides.
    Join(Box<JoinOp>),
    /// Grouped and ungrouped aggregates (and `DISTINCT`): per-group accumulators.
    Aggregate(Box<AggregateOp>),
    /// `ORDER BY ... LIMIT n [OFFSET m]`: the ordered input, its first rows.
    TopN(Box<TopNOp>),
}

/// Evaluates `expr` on `batch` as an array of its length.
pub(crate) fn eval(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    Ok(expr.evaluate(batch)?.into_array(batch.num_rows())?)
}

/// `predicate` on `batch` as a mask without NULLs (NULL, and anything not boolean, is false).
pub(crate) fn mask(predicate: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let m = eval(predicate, batch)?;
    let m = m
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
    Ok(if m.null_count() > 0 { arrow::compute::prep_null_mask_filter(&m) } else { m })
}

/// The rows of `z` where `predicate` is true (NULL is false).
pub(crate) fn filter_zset(z: &ZSet, predicate: &Arc<dyn PhysicalExpr>) -> Result<ZSet> {
    if z.is_empty() {
        return Ok(z.clone());
    }
    let mask = mask(predicate, &z.batch)?;
    let batch = filter_record_batch(&z.batch, &mask)?;
    let weights = z.weights.iter().zip(mask.iter()).filter(|(_, m)| m.unwrap_or(false)).map(|(w, _)| *w).collect();
    Ok(ZSet::new(batch, weights))
}

/// Runs `plan` as a DataFusion batch query and streams its rows, each with weight +1, a batch at
/// a time: a population absorbs each batch before the next is read, so that no input is held
/// whole beside the state it builds.
pub(crate) async fn query(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    schema: SchemaRef,
) -> Result<futures::stream::BoxStream<'static, Result<ZSet>>> {
    let frame = ctx.execute_logical_plan(plan.clone()).await?;
    let stream = frame.execute_stream().await?;
    Ok(Box::pin(stream.map_err(crate::ViewError::from).and_then(move |b| {
        let z = ZSet::uniform(b, 1).with_schema(schema.clone());
        futures::future::ready(z)
    })))
}

impl Node {
    /// The schema of this node's rows (every field nullable).
    pub(crate) fn schema(&self) -> SchemaRef {
        match self {
            Node::Scan { schema, .. }
            | Node::Constant { schema }
            | Node::Filter { schema, .. }
            | Node::Project { schema, .. }
            | Node::Rename { schema, .. }
            | Node::Union { schema, .. } => schema.clone(),
            Node::Join(j) => j.schema(),
            Node::Aggregate(a) => a.schema(),
            Node::TopN(t) => t.schema(),
        }
    }

    /// Pushes this node's output change for one transaction's `deltas` to `emit`, in pieces of
    /// at most [`crate::flight::PIECE_ROWS`] rows (more only for one hot key of an outer, semi
    /// or anti join, whose output is computed whole), updating its
    /// state (and its inputs') as they pass. Each piece is reserved in `fl` before it is built.
    pub(crate) fn step(&mut self, deltas: &Deltas, fl: &Flight, emit: &mut Emit<'_>) -> Result<()> {
        match self {
            Node::Scan { table, filters, projection, schema } => {
                let Some(delta) = deltas.get(table.as_str()) else { return Ok(()) };
                for z in pieces(delta, fl.piece_rows) {
                    // A filtered copy is at most the piece's size (a projection copies nothing).
                    let _held = if filters.is_empty() { None } else { Some(fl.hold(z.slice_bytes())?) };
                    let mut z = z;
                    for f in filters.iter() {
                        z = filter_zset(&z, f)?;
                    }
                    if z.is_empty() {
                        continue;
                    }
                    let batch = match projection {
                        Some(p) => z.batch.project(p)?,
                        None => z.batch,
                    };
                    emit(ZSet::new(batch, z.weights).with_schema(schema.clone())?)?;
                }
                Ok(())
            }
            Node::Constant { .. } => Ok(()),
            Node::Filter { input, predicate, schema } => input.step(deltas, fl, &mut |z| {
                let _held = fl.hold(z.slice_bytes())?;
                let z = filter_zset(&z, predicate)?.with_schema(schema.clone())?;
                if z.is_empty() {
                    return Ok(());
                }
                emit(z)
            }),
            Node::Project { input, exprs, schema } => input.step(deltas, fl, &mut |z| {
                let mut held = fl.hold(z.slice_bytes())?;
                let z = project(&z, exprs, schema)?;
                held.cover(z.slice_bytes())?;
                emit(z)
            }),
            Node::Rename { input, schema, .. } => input.step(deltas, fl, &mut |z| emit(z.with_schema(schema.clone())?)),
            Node::Union { inputs, schema } => {
                for i in inputs.iter_mut() {
                    i.step(deltas, fl, &mut |z| emit(z.with_schema(schema.clone())?))?;
                }
                Ok(())
            }
            Node::Join(j) => j.step(deltas, fl, emit),
            Node::Aggregate(a) => a.step(deltas, fl, emit),
            Node::TopN(t) => t.step(deltas, fl, emit),
        }
    }

    /// Seeds the state of every stateful node below and including this one from a batch query
    /// of its inputs on the current tables.
    pub(crate) fn populate<'a>(&'a mut self, ctx: &'a SessionContext) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self {
                Node::Scan { .. } | Node::Constant { .. } => Ok(()),
                Node::Filter { input, .. } | Node::Project { input, .. } | Node::Rename { input, .. } => {
                    input.populate(ctx).await
                }
                Node::Union { inputs, .. } => {
                    for i in inputs.iter_mut() {
                        i.populate(ctx).await?;
                    }
                    Ok(())
                }
                Node::Join(j) => j.populate(ctx).await,
                Node::Aggregate(a) => a.populate(ctx).await,
                Node::TopN(t) => t.populate(ctx).await,
            }
        })
    }

    /// The tables (and upstream views) this node and those below it read.
    pub(crate) fn reads(&self, out: &mut std::collections::BTreeSet<String>) {
        match self {
            Node::Scan { table, .. } => {
                out.insert(table.clone());
            }
            Node::Constant { .. } => {}
            Node::Filter { input, .. } | Node::Project { input, .. } | Node::Rename { input, .. } => input.reads(out),
            Node::Union { inputs, .. } => inputs.iter().for_each(|i| i.reads(out)),
            Node::Join(j) => j.inputs().into_iter().for_each(|i| i.reads(out)),
            Node::Aggregate(a) => a.input().reads(out),
            Node::TopN(t) => t.input().reads(out),
        }
    }

    /// Tells every join below and including this node which tables never change (they have
    /// no change feed), and lets each decide which sides it keeps: none opposite an unchanging
    /// side (that state would only ever meet changes that never come), none where the inner
    /// join below holds the rows under the same key (see [`crate::join`]).
    pub(crate) fn unchanging(&mut self, tables: &std::collections::BTreeSet<String>) {
        match self {
            Node::Scan { .. } | Node::Constant { .. } => {}
            Node::Filter { input, .. } | Node::Project { input, .. } | Node::Rename { input, .. } => {
                input.unchanging(tables)
            }
            Node::Union { inputs, .. } => inputs.iter_mut().for_each(|i| i.unchanging(tables)),
            Node::Join(j) => j.unchanging(tables),
            Node::Aggregate(a) => a.input_mut().unchanging(tables),
            Node::TopN(t) => t.input_mut().unchanging(tables),
        }
    }

    /// Whether this node's output rows whose columns `cols` equal a key (encoded as
    /// `key_types`) can be derived from the state of an inner join below on that key (through
    /// filters, projections of plain columns and renames), so that a join above need not keep
    /// them again (see [`crate::join`]).
    pub(crate) fn derivable(&self, cols: &[usize], key_types: &[arrow::datatypes::DataType]) -> bool {
        use datafusion::physical_expr::expressions::Column;
        match self {
            Node::Filter { input, .. } | Node::Rename { input, .. } => input.derivable(cols, key_types),
            Node::Project { input, exprs, .. } => {
                let below: Option<Vec<usize>> = cols
                    .iter()
                    .map(|&c| exprs.get(c).and_then(|e| e.downcast_ref::<Column>()).map(|c| c.index()))
                    .collect();
                below.is_some_and(|b| input.derivable(b.as_slice(), key_types))
            }
            Node::Join(j) => j.derivable(cols, key_types),
            _ => false,
        }
    }

    /// This node's current output rows under `keys`, derived from the inner join below (see
    /// [`Node::derivable`]), each operator's copy reserved in `held` before it is made.
    pub(crate) fn derive(&self, keys: &[Box<[u8]>], held: &mut crate::flight::Held<'_>) -> Result<ZSet> {
        match self {
            Node::Filter { input, predicate, schema } => {
                let z = input.derive(keys, held)?;
                held.grow(z.slice_bytes())?;
                filter_zset(&z, predicate)?.with_schema(schema.clone())
            }
            Node::Project { input, exprs, schema } => {
                let z = input.derive(keys, held)?;
                held.grow(z.slice_bytes())?;
                project(&z, exprs, schema)
            }
            Node::Rename { input, schema, .. } => input.derive(keys, held)?.with_schema(schema.clone()),
            Node::Join(j) => j.derive(keys, held),
            _ => Err(crate::error::unsupported("Join", "rows derived from an operator that is not an inner join")),
        }
    }

    /// Bytes of state held by this node and those below it.
    pub(crate) fn state_bytes(&self) -> usize {
        match self {
            Node::Scan { .. } | Node::Constant { .. } => 0,
            Node::Filter { input, .. } | Node::Project { input, .. } | Node::Rename { input, .. } => {
                input.state_bytes()
            }
            Node::Union { inputs, .. } => inputs.iter().map(|i| i.state_bytes()).sum(),
            Node::Join(j) => j.state_bytes(),
            Node::Aggregate(a) => a.state_bytes(),
            Node::TopN(t) => t.state_bytes(),
        }
    }

    /// Lines of `views explain`: one per node, indented by depth, with its state.
    pub(crate) fn explain(&self, depth: usize, out: &mut Vec<String>) {
        let pad = "  ".repeat(depth);
        let line = match self {
            Node::Scan { table, filters, projection, schema } => format!(
                "Scan {table}: changes{}{} ({} columns)",
                if filters.is_empty() { String::new() } else { format!(", {} pushed-down filter(s)", filters.len()) },
                if projection.is_some() { ", projected" } else { "" },
                schema.fields().len()
            ),
            Node::Constant { .. } => "Constant: never changes".to_string(),
            Node::Filter { predicate, .. } => format!("Filter: {predicate} (stateless)"),
            Node::Project { exprs, .. } => format!("Project: {} expression(s) (stateless)", exprs.len()),
            Node::Rename { what, .. } => format!("{what} (stateless)"),
            Node::Union { inputs, .. } => format!("Union all: {} inputs (stateless)", inputs.len()),
            Node::Join(j) => j.describe(),
            Node::Aggregate(a) => a.describe(),
            Node::TopN(t) => t.describe(),
        };
        out.push(format!("{pad}{line}"));
        match self {
            Node::Scan { .. } | Node::Constant { .. } => {}
            Node::Filter { input, .. } | Node::Project { input, .. } | Node::Rename { input, .. } => {
                input.explain(depth + 1, out)
            }
            Node::Union { inputs, .. } => inputs.iter().for_each(|i| i.explain(depth + 1, out)),
            Node::Join(j) => j.inputs().into_iter().for_each(|i| i.explain(depth + 1, out)),
            Node::Aggregate(a) => a.input().explain(depth + 1, out),
            Node::TopN(t) => t.input().explain(depth + 1, out),
        }
    }
}

/// `exprs` of each row of `z`, as a Z-set of `schema`.
pub(crate) fn project(z: &ZSet, exprs: &[Arc<dyn PhysicalExpr>], schema: &SchemaRef) -> Result<ZSet> {
    let columns = exprs.iter().map(|e| eval(e, &z.batch)).collect::<Result<Vec<_>>>()?;
    let batch = batch_of(schema, columns, z.len())?;
    ZSet::new(batch, z.weights.clone()).with_schema(schema.clone())
}

/// `columns` as a batch named by `schema` but typed by the columns themselves (every field
/// nullable); [`ZSet::with_schema`] then casts where the types differ.
pub(crate) fn batch_of(schema: &SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| {
            arrow::datatypes::Field::new(f.name(), c.data_type().clone(), true).with_metadata(f.metadata().clone())
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(Arc::new(arrow::datatypes::Schema::new(fields)), columns, &options)?)
}
