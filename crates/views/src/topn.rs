//! `ORDER BY ... LIMIT n [OFFSET m]`: the whole ordered input as a multiset (by sort key, then
//! by the row itself so ties are broken the same way every time); the output is its rows m+1
//! to m+n, and a transaction's output change is the difference between those rows before and
//! after it.

use crate::error::Result;
use crate::flight::Flight;
use crate::node::{eval, query, Deltas, Emit, Node};
use crate::zset::{relax_nullability, RowBytes, RowCodec, ZSet};
use arrow::compute::SortOptions;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A top-n node.
pub(crate) struct TopNOp {
    input: Node,
    plan: LogicalPlan,
    sort: Vec<Arc<dyn PhysicalExpr>>,
    sort_codec: RowCodec,
    rows: RowCodec,
    skip: usize,
    fetch: usize,
    /// (sort key, row) with its multiplicity, in output order.
    state: BTreeMap<(RowBytes, RowBytes), i64>,
    bytes: usize,
    schema: SchemaRef,
}

impl TopNOp {
    pub(crate) fn new(
        input: Node,
        plan: LogicalPlan,
        sort: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
        skip: usize,
        fetch: usize,
    ) -> Result<TopNOp> {
        let schema = input.schema();
        let fields = sort
            .iter()
            .enumerate()
            .map(|(i, (e, _))| Ok(Field::new(format!("s{i}"), e.data_type(&schema)?, true)))
            .collect::<Result<Vec<_>>>()?;
        let sort_codec = RowCodec::sorted(Arc::new(Schema::new(fields)), sort.iter().map(|(_, o)| *o).collect())?;
        let rows = RowCodec::new(schema.clone())?;
        Ok(TopNOp {
            input,
            plan,
            sort: sort.into_iter().map(|(e, _)| e).collect(),
            sort_codec,
            rows,
            skip,
            fetch,
            state: BTreeMap::new(),
            bytes: 0,
            schema: relax_nullability(&schema),
        })
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
        format!(
            "TopN offset {} limit {}: state {} distinct rows, {}",
            self.skip,
            self.fetch,
            self.state.len(),
            crate::format_bytes(self.own_bytes())
        )
    }

    /// Its rows' boxes and the B-tree's nodes.
    fn own_bytes(&self) -> usize {
        self.bytes + crate::mem::btree::<(RowBytes, RowBytes), i64>(self.state.len())
    }

    pub(crate) fn state_bytes(&self) -> usize {
        self.own_bytes() + self.input.state_bytes()
    }

    fn absorb(&mut self, z: &ZSet) -> Result<()> {
        if z.is_empty() {
            return Ok(());
        }
        let columns = self.sort.iter().map(|e| eval(e, &z.batch)).collect::<Result<Vec<_>>>()?;
        let columns = columns
            .into_iter()
            .zip(self.sort_codec.schema().fields())
            .map(
                |(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c)
                    } else {
                        Ok(arrow::compute::cast(&c, f.data_type())?)
                    }
                },
            )
            .collect::<Result<Vec<_>>>()?;
        let keys = self.sort_codec.encode(&columns)?;
        let rows = self.rows.encode_batch(&z.batch)?;
        for i in 0..z.len() {
            let entry = (Box::<[u8]>::from(keys.row(i).as_ref()), Box::<[u8]>::from(rows.row(i).as_ref()));
            let size = crate::mem::boxed(entry.0.len()) + crate::mem::boxed(entry.1.len());
            match self.state.get_mut(&entry) {
                Some(w) => {
                    *w += z.weights[i];
                    if *w == 0 {
                        self.state.remove(&entry);
                        self.bytes -= size;
                    }
                }
                None => {
                    self.state.insert(entry, z.weights[i]);
                    self.bytes += size;
                }
            }
        }
        Ok(())
    }

    /// The rows in the window, with their multiplicity inside it.
    fn window(&self) -> HashMap<Box<[u8]>, i64> {
        let mut out: HashMap<Box<[u8]>, i64> = HashMap::new();
        let (mut pos, end) = (0usize, self.skip + self.fetch);
        for ((_, row), &w) in &self.state {
            if pos >= end {
                break;
            }
            let w = w.max(0) as usize;
            let from = pos.max(self.skip);
            let to = (pos + w).min(end);
            if to > from {
                *out.entry(row.clone()).or_default() += (to - from) as i64;
            }
            pos += w;
        }
        out
    }

    pub(crate) async fn populate(&mut self, ctx: &SessionContext) -> Result<()> {
        self.input.populate(ctx).await?;
        let mut input = query(ctx, &self.plan, self.input.schema()).await?;
        while let Some(z) = futures::TryStreamExt::try_next(&mut input).await? {
            self.absorb(&z)?;
        }
        Ok(())
    }

    /// Folds every piece of the input's change into the ordered state, then pushes the
    /// difference of the window (`OFFSET`/`LIMIT`) before and after: at most twice its rows.
    pub(crate) fn step(&mut self, deltas: &Deltas, fl: &Flight, emit: &mut Emit<'_>) -> Result<()> {
        let placeholder = Node::Constant { schema: self.input.schema() };
        let mut input = std::mem::replace(&mut self.input, placeholder);
        let mut before: Option<HashMap<Box<[u8]>, i64>> = None;
        let mut held = fl.hold(0)?;
        let folded = input.step(deltas, fl, &mut |z| {
            if z.is_empty() {
                return Ok(());
            }
            if before.is_none() {
                let window = self.window();
                held.grow(window.keys().map(|r| crate::mem::boxed(r.len()) + 32).sum::<usize>())?;
                before = Some(window);
            }
            let rows = self.rows.encode_batch(&z.batch)?;
            let growth: usize = (0..z.len())
                .filter(|&i| z.weights[i] > 0)
                .map(|i| 2 * crate::mem::boxed(rows.row(i).as_ref().len()) + 64)
                .sum();
            fl.grow_state(growth)?;
            self.absorb(&z)
        });
        self.input = input;
        folded?;
        let Some(before) = before else { return Ok(()) };
        let mut diff = self.window();
        held.grow(diff.keys().map(|r| 2 * (crate::mem::boxed(r.len()) + 32)).sum::<usize>())?;
        for (row, w) in before {
            *diff.entry(row).or_default() -= w;
        }
        diff.retain(|_, w| *w != 0);
        if diff.is_empty() {
            return Ok(());
        }
        let (rows, weights): (Vec<Box<[u8]>>, Vec<i64>) = diff.into_iter().unzip();
        let batch = self.rows.decode(rows.iter().map(|r| r.as_ref()))?;
        emit(ZSet::new(batch, weights).with_schema(self.schema.clone())?)
    }
}
