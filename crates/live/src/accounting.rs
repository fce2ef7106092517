//! What the views' memory is charged to: one reservation per view (its operators' state) and per
//! kept table (rows by key, current rows for recomputed views), grown before what they add
//! exists, refused by name when the views' lease cannot lend more.

use crate::error::{Error, Result};
use crate::host::{state_bytes, Views};
use arrow::array::RecordBatch;
use datafusion::execution::memory_pool::MemoryConsumer;
use spillway_views::{ViewError, ZSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Views {
    /// Resizes view `name`'s reservation to its state: growth is asked of the pool, and refused
    /// when the views' lease is full (nothing is then committed: the caller stops).
    pub(crate) fn charge(&mut self, name: &str, file: Option<&str>) -> Result<()> {
        let want = self.live.get(name).map_or(0, state_bytes);
        let Some(res) = self.reservations.get_mut(name) else { return Ok(()) };
        if want <= res.size() {
            res.resize(want);
            return Ok(());
        }
        let Err(e) = res.try_resize(want) else { return Ok(()) };
        let sizes = self.live.iter().map(|(n, l)| (state_bytes(l) as u64, n.as_str())).collect();
        Err(over_lease(name, want, sizes, e, &self.ctx.runtime_env().memory_pool, file))
    }

    /// A change batch of `table`, if it is kept by key, applied to its rows after what it adds
    /// is reserved (refused as a table's growth is, naming `file`); the Z-set it makes, or
    /// `None` for a table not kept by key. `path` names the change in errors.
    pub(crate) fn apply_keyed(
        &mut self,
        table: &str,
        batch: &RecordBatch,
        file: &str,
        path: &Path,
    ) -> Result<Option<ZSet>> {
        let change_err = |source: ViewError| Error::Change { file: path.to_path_buf(), error: source };
        let Some(k) = self.keyed.get(table) else { return Ok(None) };
        let prepared = k.prepare(batch).map_err(change_err)?;
        let ahead = k.growth(&prepared);
        self.charge_table(table, Some(file), ahead)?;
        match self.keyed.get_mut(table) {
            Some(k) => Ok(Some(k.apply_prepared(prepared).map_err(change_err)?)),
            None => Ok(None),
        }
    }

    /// Resizes the reservation of the rows kept of table `table` (by key, so that a delete or an
    /// update may name only the key; whole, for views recomputed from it) to what they hold
    /// plus `ahead` (what is about to be added); growth is asked of the pool like a view's state.
    pub(crate) fn charge_table(&mut self, table: &str, file: Option<&str>, ahead: usize) -> Result<()> {
        let (keyed, current) = (self.keyed.get(table), self.current.get(table));
        if keyed.is_none() && current.is_none() {
            return Ok(());
        }
        let want = keyed.map_or(0, |k| k.bytes()) + current.map_or(0, |c| c.rows.bytes()) + ahead;
        let what = if keyed.is_some() { "rows by key" } else { "current rows, for recomputed views" };
        let name = format!("table {table}");
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let res = self
            .reservations
            .entry(name.clone())
            .or_insert_with(|| MemoryConsumer::new(format!("{name} ({what})")).register(&pool));
        if want <= res.size() {
            res.resize(want);
            return Ok(());
        }
        let Err(e) = res.try_resize(want) else { return Ok(()) };
        let sizes = self.reservations.iter().map(|(n, r)| (r.size() as u64, n.as_str())).collect();
        Err(over_lease(&name, want, sizes, e, &pool, file))
    }

    /// Rewrites the arenas of the rows kept of `table` once deletes left them mostly dead, when
    /// the lease can hold the copy meanwhile (a reservation of its own, given back after);
    /// otherwise they stay as they are, still charged, for a later try.
    pub(crate) fn tidy_table(&mut self, table: &str) {
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let reserve = |n: usize| {
            let r = MemoryConsumer::new(format!("table {table} (rewriting its rows)")).register(&pool);
            r.try_grow(n).ok().map(|()| r)
        };
        if let Some(k) = self.keyed.get_mut(table) {
            k.compact_if(reserve);
        }
        if let Some(c) = self.current.get_mut(table) {
            c.rows.compact_if(reserve);
        }
    }
}

/// The error of `name`'s state (`want` bytes) refused by the pool, with what holds the lease
/// (`sizes`: bytes and holder), the largest first.
pub(crate) fn over_lease(
    name: &str,
    want: usize,
    mut sizes: Vec<(u64, &str)>,
    e: datafusion::error::DataFusionError,
    pool: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    file: Option<&str>,
) -> Error {
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest = sizes
        .iter()
        .take(3)
        .map(|(b, n)| format!("{n} {}", spillway_governor::fmt_bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    let lease = match pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(b) => b as u64,
        _ => 0,
    };
    Error::ViewMemory {
        view: name.to_string(),
        state: want as u64,
        total: sizes.iter().map(|(b, _)| b).sum(),
        lease,
        largest: if largest.is_empty() { "none yet".into() } else { largest },
        reason: match e {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => m,
            e => e.to_string(),
        },
        file: file.map(PathBuf::from),
    }
}
