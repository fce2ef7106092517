//! A view: its SQL, its optimized plan, its operator graph and its current contents.

use crate::arrange::Arrangement;
use crate::compact::{Encoded, StateCodec};
use crate::error::{Result, ViewError};
use crate::flight::{Collector, Flight};
use crate::lower::lower;
use crate::node::{query, Deltas, Node};
use crate::zset::ZSet;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use std::collections::BTreeSet;

/// A view maintained from changes.
pub struct View {
    name: String,
    plan: LogicalPlan,
    root: Node,
    contents: Contents,
    /// What is in flight while a transaction passes, reserved from the pool of the `ctx` the
    /// view was planned on.
    flight: Flight,
    tables: BTreeSet<String>,
    /// Tables declared never to change ([`View::unchanging`]).
    fixed: BTreeSet<String>,
    /// What its expressions were planned with (lowering again after [`View::unchanging`]).
    props: datafusion::execution::context::ExecutionProps,
    /// The view's `ORDER BY`, when it is the outermost operator: its contents are read in it.
    order: Vec<(std::sync::Arc<dyn datafusion::physical_plan::PhysicalExpr>, arrow::compute::SortOptions)>,
}

impl View {
    /// Plans `sql` (one `SELECT`) against the tables registered in `ctx` and lowers its optimized
    /// plan. Fails with [`ViewError::Unsupported`] naming the first operator that cannot be
    /// maintained.
    pub async fn plan(ctx: &SessionContext, name: &str, sql: &str) -> Result<View> {
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await?;
        let mut plan = state.optimize(&plan)?;
        if crate::scalar::has_scalar_subquery(&plan) {
            plan = state.optimize(&crate::scalar::join_scalar_subqueries(plan)?)?;
        }
        let mut root = lower(&plan, state.execution_props())?;
        // Every join decides which sides it keeps (all tables may change until told otherwise).
        root.unchanging(&BTreeSet::new());
        let mut tables = BTreeSet::new();
        plan.apply(|p| {
            if let LogicalPlan::TableScan(s) = p {
                tables.insert(s.table_name.table().to_string());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        let codec = StateCodec::new(root.schema())?;
        let order = crate::lower::output_order(&plan, state.execution_props())?;
        let flight = Flight::new(name, &ctx.runtime_env().memory_pool);
        Ok(View {
            name: name.to_string(),
            plan,
            root,
            contents: Contents { rows: Arrangement::new(), count: 0, codec },
            flight,
            tables,
            fixed: BTreeSet::new(),
            props: state.execution_props().clone(),
            order,
        })
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tables (and upstream views) it reads.
    pub fn tables(&self) -> &BTreeSet<String> {
        &self.tables
    }

    /// The schema of its rows.
    pub fn schema(&self) -> SchemaRef {
        self.root.schema()
    }

    /// The optimized logical plan it was lowered from.
    pub fn logical_plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Declares the tables (and upstream views) that never change — those without a change
    /// feed — before [`View::populate`]: a join keeps no state for the side opposite one of
    /// them (often the larger side: lineitem beside part), and inner joins are reordered so
    /// that they are joined first (see `reorder.rs`). A change to one of them is then refused
    /// by [`View::apply`].
    pub fn unchanging(&mut self, tables: &BTreeSet<String>) -> Result<()> {
        self.fixed = self.tables.intersection(tables).cloned().collect();
        if let Some(plan) = crate::reorder::reorder(&self.plan, &self.fixed)? {
            self.root = lower(&plan, &self.props)?;
            self.plan = plan;
        }
        self.root.unchanging(tables);
        Ok(())
    }

    /// First fill: every stateful operator's state from a batch query of its inputs on the
    /// tables as `ctx` has them now, and the contents from the view's own query. Nothing goes
    /// through the change path.
    pub async fn populate(&mut self, ctx: &SessionContext) -> Result<()> {
        self.root.populate(ctx).await?;
        self.contents.rows.clear();
        self.contents.count = 0;
        let mut input = query(ctx, &self.plan, self.root.schema()).await?;
        while let Some(z) = futures::TryStreamExt::try_next(&mut input).await? {
            let rows = self.contents.codec.encode_batch(&z.batch)?;
            self.contents.absorb(&rows, &z.weights);
        }
        Ok(())
    }

    /// Applies one transaction's changes; returns the view's change (consolidated), collected
    /// in memory (reserved in flight). [`View::apply_each`] hands it over a piece at a time.
    pub fn apply(&mut self, deltas: &Deltas) -> Result<ZSet> {
        let schema = self.root.schema();
        let mut parts = Vec::new();
        // The pieces kept, each reserved as it comes; then their concatenation and its
        // consolidation: three times them.
        let mut kept = self.flight.collector();
        self.apply_each(deltas, &mut |z| {
            kept.grow(z.slice_bytes())?;
            parts.push(z);
            Ok(())
        })?;
        kept.grow(2 * parts.iter().map(|p| p.slice_bytes()).sum::<usize>())?;
        ZSet::concat(schema, parts)?.consolidate()
    }

    /// Applies one transaction's changes and hands the view's change to `emit` a piece at a
    /// time (not consolidated: the same row may come in two pieces). The change passes its
    /// operators in pieces (see [`crate::flight`]), each reserved from the pool before it is
    /// built; the contents take each piece as it comes. The view's changes to one input may
    /// be applied in several calls (a transaction read back from disk a batch at a time), and
    /// its inputs one at a time: the operators keep their own inputs, so any split of a
    /// transaction gives the same state and the same sum of changes.
    pub fn apply_each(&mut self, deltas: &Deltas, emit: &mut dyn FnMut(ZSet) -> Result<()>) -> Result<()> {
        if !self.tables.iter().any(|t| deltas.contains_key(t)) {
            return Ok(());
        }
        if let Some(t) = self.fixed.iter().find(|t| deltas.get(t.as_str()).is_some_and(|z| !z.is_empty())) {
            return Err(ViewError::BadChange {
                table: t.clone(),
                reason: format!("view {} was told {t} never changes (it has no change feed)", self.name),
            });
        }
        let View { root, contents, flight, .. } = self;
        let flight = &*flight;
        let mut negative = None;
        let stepped = root.step(deltas, flight, &mut |z| {
            // Encoded first, so that the state it adds is reserved by its real bytes.
            let rows = contents.codec.encode_batch(&z.batch)?;
            let (added, bytes) =
                (0..z.len()).filter(|&i| z.weights[i] > 0).fold((0, 0), |(n, b), i| (n + 1, b + rows.row(i).len()));
            flight.grow_state(contents.rows.growth(added, bytes))?;
            if let Some(found) = contents.absorb(&rows, &z.weights) {
                negative.get_or_insert(found);
            }
            contents.rows.compact_if(|n| flight.hold(n).ok());
            emit(z)
        });
        flight.end();
        stepped?;
        if let Some((row, count)) = negative {
            return Err(ViewError::AbsentRowDeleted { operator: format!("view {}", self.name), row, count });
        }
        Ok(())
    }

    /// Sets the rows of a piece (8,192 by default): small pieces make tests cross piece
    /// boundaries inside small transactions.
    pub fn set_piece_rows(&mut self, rows: usize) {
        self.flight.piece_rows = rows.max(1);
    }

    /// Bytes reserved in flight now (none between transactions).
    pub fn in_flight(&self) -> usize {
        self.flight.bytes()
    }

    /// Number of rows (with duplicates).
    pub fn rows(&self) -> u64 {
        self.contents.count.max(0) as u64
    }

    /// Bytes of state: every operator's plus the contents.
    pub fn state_bytes(&self) -> usize {
        self.root.state_bytes() + self.contents.rows.bytes()
    }

    /// The current contents, each row repeated as often as it occurs, in the view's `ORDER BY`
    /// when it has one outermost: one batch, reserved from the view's pool before it is decoded
    /// (refused as [`ViewError::InFlight`]) and held as long as the [`Held`] is.
    pub fn contents(&self) -> Result<Held> {
        let mut chunks = self.contents_chunks(usize::MAX);
        let batch = match chunks.next_chunk()? {
            Some(b) => b,
            None => RecordBatch::new_empty(crate::zset::relax_nullability(&self.root.schema())),
        };
        Ok(Held { batch, _reservation: Some(chunks.held) })
    }

    /// The current contents a chunk of at most `rows` rows at a time, each row repeated as often
    /// as it occurs: what publishing a view's whole contents reads, so that it holds one chunk
    /// at a time, not a second copy of the view. Each chunk is reserved from the view's pool
    /// before it is decoded (refused as [`ViewError::InFlight`]) and stays reserved until the
    /// next one is asked for or the chunks are dropped. A view with an outermost `ORDER BY` is
    /// read in that order, as one chunk (reserved the same way): its order needs every row.
    pub fn contents_chunks(&self, rows: usize) -> ContentsChunks<'_> {
        ContentsChunks {
            view: self,
            rows: Box::new(self.contents.rows.rows()),
            chunk: if self.order.is_empty() { rows.max(1) } else { usize::MAX },
            read: 0,
            held: self.flight.collector_of("its contents, being read"),
        }
    }

    /// The operator graph, one line per operator with its state.
    pub fn explain(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.root.explain(0, &mut out);
        out
    }
}

/// A view's contents read whole ([`View::contents`]): the batch, reserved from the view's pool
/// until this is dropped.
pub struct Held {
    /// The rows.
    pub batch: RecordBatch,
    _reservation: Option<Collector>,
}

impl Held {
    /// A batch whose bytes are charged elsewhere already (a recomputed view's rows, which are
    /// its state): nothing more is reserved.
    pub fn shared(batch: RecordBatch) -> Held {
        Held { batch, _reservation: None }
    }
}

/// A view's contents a chunk at a time ([`View::contents_chunks`]).
pub struct ContentsChunks<'a> {
    view: &'a View,
    rows: Box<dyn Iterator<Item = &'a [u8]> + 'a>,
    chunk: usize,
    /// Rows handed out so far.
    read: usize,
    /// The chunk handed out last.
    held: Collector,
}

impl ContentsChunks<'_> {
    fn next_chunk(&mut self) -> Result<Option<RecordBatch>> {
        self.held.release();
        let view = self.view;
        let left = (view.rows() as usize).saturating_sub(self.read);
        if left == 0 {
            return Ok(None);
        }
        let schema = view.root.schema();
        // Each chunk by an estimate from the schema and the encoded bytes before it is decoded,
        // covered once built by what it measures.
        let batch = if self.read == 0 && self.chunk >= left {
            // Every row at once, straight from the arrangement (whose bytes bound its rows').
            self.held.grow(decoded_estimate(&schema, left, view.contents.rows.bytes()))?;
            let batch = view.contents.codec.decode(self.rows.by_ref())?;
            self.held.cover(batch.get_array_memory_size())?;
            batch
        } else {
            let list = self.chunk * std::mem::size_of::<&[u8]>();
            self.held.grow(list)?;
            let rows: Vec<&[u8]> = self.rows.by_ref().take(self.chunk).collect();
            let encoded: usize = rows.iter().map(|r| r.len()).sum();
            self.held.grow(decoded_estimate(&schema, rows.len(), encoded))?;
            let batch = view.contents.codec.decode(rows)?;
            self.held.cover(list + batch.get_array_memory_size())?;
            batch
        };
        if batch.num_rows() == 0 {
            self.read = usize::MAX; // the rows ran out before the count said (never, if it is kept right)
            return Ok(None);
        }
        self.read += batch.num_rows();
        if view.order.is_empty() || batch.num_rows() < 2 {
            return Ok(Some(batch));
        }
        let size = batch.get_array_memory_size();
        self.held.grow(size + batch.num_rows() * 4)?;
        let columns = view
            .order
            .iter()
            .map(|(e, o)| Ok(arrow::compute::SortColumn { values: crate::node::eval(e, &batch)?, options: Some(*o) }))
            .collect::<Result<Vec<_>>>()?;
        let idx = arrow::compute::lexsort_to_indices(&columns, None)?;
        let sorted = arrow::compute::take_record_batch(&batch, &idx)?;
        drop((batch, columns, idx));
        self.held.release();
        self.held.grow(sorted.get_array_memory_size())?;
        Ok(Some(sorted))
    }
}

impl Iterator for ContentsChunks<'_> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        self.next_chunk().transpose()
    }
}

/// What `rows` rows of `schema`, `encoded` bytes in their compact encoding, take decoded: each
/// fixed-width value's width, each variable-width value's offset (its bytes counted in
/// `encoded`), a validity bit per value, and the arrays' own overhead.
fn decoded_estimate(schema: &SchemaRef, rows: usize, encoded: usize) -> usize {
    let per_row: usize = schema.fields().iter().map(|f| f.data_type().primitive_width().unwrap_or(8) + 1).sum();
    rows * per_row + encoded + schema.fields().len() * 256
}

/// A view's rows with their multiplicity (an arrangement with one empty key).
struct Contents {
    rows: Arrangement,
    /// Rows held, with duplicates (kept as changes arrive).
    count: i64,
    codec: StateCodec,
}

impl Contents {
    /// Adds `rows` (encoded by its codec) with `weights` to the contents; returns a row that
    /// went below zero and its count, if one did.
    fn absorb(&mut self, rows: &Encoded, weights: &[i64]) -> Option<(String, i64)> {
        let mut negative = None;
        for (i, &w) in weights.iter().enumerate() {
            let row = rows.row(i);
            self.count += w;
            self.rows.add(&[], row, w);
            if w < 0 && negative.is_none() {
                let count = self.rows.weight(&[], row);
                if count < 0 {
                    negative = Some((self.codec.describe(row), count));
                }
            }
        }
        negative
    }
}
