//! The incremental view engine: SQL views kept exactly up to date from row changes.
//!
//! A change is a Z-set ([`ZSet`]): Arrow rows with an `i64` weight each (+1 insert, −1 delete,
//! an update is −old +new). A view's `SELECT` is planned and optimized by DataFusion (so
//! predicates and projections are pushed down to the scans) and its `LogicalPlan` is lowered to
//! a graph of operators that turn input changes into output changes, following DBSP (Budiu et
//! al., VLDB 2023). Population runs DataFusion batch queries on the tables as they are and
//! seeds each operator's state; changes never replay the whole table.
//!
//! ```text
//!   scalar.rs     uncorrelated scalar subqueries ──▶ joins with their one row
//!   reorder.rs    inner joins reordered for state: unchanging relations joined first
//!   lower.rs      LogicalPlan ──▶ Node graph, or Unsupported { operator, reason }
//!   node.rs       Node; stateless operators: scan of changes, filter, project, rename, union
//!   arrange.rs    Arrangement: rows by key with multiplicities, packed (an arena, two tables)
//!   compact.rs    StateCodec: rows as compact bytes compared for equality (what state keeps)
//!   join.rs       JoinOp: inner (bilinear), outer/semi/anti/mark (per touched key) joins;
//!                 no state beside an unchanging side, counts per key for semi/anti/mark
//!   aggregate.rs  AggregateOp: count/sum/avg (DataFusion's retractable accumulators, their
//!                 states packed in an arrangement), min/max/count(DISTINCT) (one ordered map
//!                 of values per operator), DISTINCT, HAVING above it
//!   topn.rs       TopNOp: ORDER BY ... LIMIT n OFFSET m
//!   view.rs       View: plan, populate, apply a transaction, contents, explain
//!   flight.rs     pieces of a transaction in flight, reserved from the pool before they exist
//!   spool.rs      Spool/Change: a transaction's change kept until its commit, spilled to the
//!                 temp space when the pool refuses it, consolidated on disk by DataFusion
//!   zset.rs       ZSet and RowCodec (rows as arrow-row bytes: where order matters)
//!   changes.rs    change rows with `_op` (insert/delete/upsert) ──▶ Z-sets; KeyedTable
//! ```
//!
//! This crate knows nothing of projects, files or sinks: `spillway-pipeline` reads change files
//! into [`Deltas`], collects what [`View::apply_each`] emits in a [`Spool`] and publishes it.

mod aggregate;
mod arrange;
pub mod changes;
mod compact;
mod error;
mod flight;
mod join;
mod lower;
mod mem;
mod node;
mod reorder;
mod scalar;
mod spool;
mod topn;
mod view;
mod zset;

pub use arrange::{Arrangement, Group};
pub use error::{Result, ViewError};
pub use node::Deltas;
pub use spool::{from_weighted, with_weights, Change, Spool, WEIGHT_COLUMN};
pub use view::{ContentsChunks, Held, View};
pub use zset::{relax_nullability, RowBytes, RowCodec, ZSet};

pub(crate) fn format_bytes(bytes: usize) -> String {
    spillway_governor::fmt_bytes(bytes as u64)
}
