//! One transaction through every view, in dependency order: each view takes the change of the
//! tables and views it reads a piece at a time, its state charged before each piece; its own
//! change goes to a spool (in memory while the lease grants it, in the temp space beyond). Then
//! the log entry, the transaction's commit point.

use crate::accounting::over_lease;
use crate::error::{Error, Result};
use crate::host::{state_bytes, Live, Views};
use crate::store::Applied;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use spillway_views::{Change, Deltas, Spool, ViewError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

impl Views {
    /// One transaction through every view in order; returns the views that changed, with
    /// their change.
    pub(crate) async fn transaction(
        &mut self,
        table: &str,
        change: &Change,
        file: &str,
    ) -> Result<BTreeMap<String, Change>> {
        let change_err = |source: ViewError| Error::Change { file: file.into(), error: source };
        let rt = self.ctx.runtime_env();
        if self.current.contains_key(table) {
            let mut pieces = change.stream(&rt).map_err(change_err)?;
            while let Some(z) = pieces.try_next().await.map_err(change_err)? {
                let ahead = self.current.get(table).map_or(0, |c| c.growth(&z));
                self.charge_table(table, Some(file), ahead)?;
                if let Some(c) = self.current.get_mut(table) {
                    c.apply(&z).map_err(change_err)?;
                }
            }
            self.tidy_table(table);
            self.charge_table(table, Some(file), 0)?;
        }
        // Each view's change, kept until the commit (spilled when the lease refuses it); the
        // views that read a view take its change a piece at a time.
        let mut changed: BTreeMap<String, Change> = BTreeMap::new();
        self.view_us.clear();
        for name in self.order.clone() {
            if self.stopped.contains_key(&name) {
                continue;
            }
            let view_started = Instant::now();
            let path = self.project.views[&name].path.clone();
            let view_err =
                |source: ViewError| Error::View { view: name.clone(), path: path.clone(), line: 1, error: source };
            let live = self.live.get_mut(&name).expect("every view is live");
            let out = match live {
                Live::Incremental(v) => {
                    let inputs: Vec<(String, &Change)> = v
                        .tables()
                        .iter()
                        .filter_map(|t| if t == table { Some(change) } else { changed.get(t) }.map(|c| (t.clone(), c)))
                        .collect();
                    if inputs.is_empty() {
                        continue;
                    }
                    let mut spool = Spool::new(format!("view {name} (its change)"), v.schema(), &rt);
                    let reservation = self.reservations.get_mut(&name);
                    let mut refused = None;
                    'inputs: for (t, input) in inputs {
                        let mut pieces = input.stream(&rt).map_err(change_err)?;
                        while let Some(z) = pieces.try_next().await.map_err(change_err)? {
                            // The state the pieces before this one added is the view's from now
                            // on: its reservation follows (a refusal is reported below, by name).
                            if let Some(res) = &reservation {
                                let want = v.state_bytes();
                                if let Err(e) = res.try_resize(want) {
                                    refused = Some((want, e));
                                    break 'inputs;
                                }
                            }
                            let mut deltas = Deltas::new();
                            deltas.insert(t.clone(), z);
                            v.apply_each(&deltas, &mut |out| spool.push(out)).map_err(|e| match e {
                                e @ (ViewError::BadChange { .. }
                                | ViewError::AbsentRowDeleted { .. }
                                | ViewError::InFlight { .. }) => change_err(e),
                                e => view_err(e),
                            })?;
                        }
                    }
                    if let Some((want, e)) = refused {
                        let sizes = self.live.iter().map(|(n, l)| (state_bytes(l) as u64, n.as_str())).collect();
                        let pool = self.ctx.runtime_env().memory_pool.clone();
                        return Err(over_lease(&name, want, sizes, e, &pool, Some(file)));
                    }
                    let out = spool.finish().await.map_err(view_err)?;
                    if out.on_disk() {
                        spillway_faults::point("views-view-change-spilled");
                    }
                    out
                }
                Live::Recompute(r) => {
                    if !r.tables.iter().any(|t| t == table || changed.contains_key(t)) {
                        continue;
                    }
                    let sql = r.sql.clone();
                    // Its own catalog (the same settings and pool): the tables it reads, as they are now.
                    let ctx = SessionContext::new_with_config_rt(self.ctx.copied_config(), self.ctx.runtime_env());
                    // The contents of the views it reads, reserved while it runs (and its catalog
                    // holds them: both go at the end of this block).
                    let mut held = Vec::new();
                    for t in r.tables.clone() {
                        let batch = match (self.current.get(&t), self.live.get(&t)) {
                            (Some(c), _) => c.batch().map_err(view_err)?,
                            (None, Some(Live::Incremental(v))) => {
                                let contents = v.contents().map_err(view_err)?;
                                let batch = contents.batch.clone();
                                held.push(contents);
                                batch
                            }
                            (None, Some(Live::Recompute(u))) => u.rows.clone(),
                            (None, None) => continue,
                        };
                        let mem = MemTable::try_new(batch.schema(), vec![vec![batch]])
                            .map_err(spillway_engine::Error::from)?;
                        let _ = ctx.deregister_table(t.as_str());
                        ctx.register_table(t.as_str(), Arc::new(mem)).map_err(spillway_engine::Error::from)?;
                    }
                    let batches = ctx.sql(&sql).await.map_err(|e| view_err(e.into()))?;
                    let batches = batches.collect().await.map_err(|e| view_err(e.into()))?;
                    let Some(Live::Recompute(r)) = self.live.get_mut(&name) else { unreachable!("a recomputed view") };
                    Change::memory(r.replace(batches).map_err(view_err)?)
                }
            };
            let us = view_started.elapsed().as_micros() as u64;
            self.view_us.insert(name.clone(), us);
            let counts = self.counts.entry(name.clone()).or_default();
            counts.busy_us += us;
            if !out.is_empty() {
                counts.transactions += 1;
                counts.change_rows += out.rows();
            }
            self.charge(&name, Some(file))?;
            if out.is_empty() {
                continue;
            }
            self.last_change.insert(name.clone(), file.to_string());
            changed.insert(name, out);
        }
        Ok(changed)
    }

    /// Writes log entry `applied` with the rows of `change` (a piece at a time) and renames it
    /// into place: the transaction's commit point.
    pub(crate) async fn log(&self, applied: &Applied, change: &Change) -> Result<()> {
        let change_err = |source: ViewError| Error::Change { file: PathBuf::from(&applied.file), error: source };
        let mut entry = self.store.begin(applied, &change.schema())?;
        let mut pieces = change.stream(&self.ctx.runtime_env()).map_err(change_err)?;
        while let Some(z) = pieces.try_next().await.map_err(change_err)? {
            entry.write(&z)?;
        }
        entry.commit()
    }
}

/// Adds each view's `changed` to its spool in `spools` (one per view, made on first use).
pub(crate) async fn keep(
    spools: &mut BTreeMap<String, Spool>,
    changed: BTreeMap<String, Change>,
    rt: &Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> std::result::Result<(), ViewError> {
    for (v, change) in changed {
        let spool = match spools.entry(v) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let what = format!("view {} (its change)", e.key());
                e.insert(Spool::new(what, change.schema(), rt))
            }
        };
        let mut pieces = change.stream(rt)?;
        while let Some(z) = pieces.try_next().await? {
            spool.push(z)?;
        }
    }
    Ok(())
}

/// Each view's spooled change, consolidated (views whose parts cancel out are left out).
pub(crate) async fn finish_all(
    spools: BTreeMap<String, Spool>,
) -> std::result::Result<BTreeMap<String, Change>, ViewError> {
    let mut out = BTreeMap::new();
    for (view, spool) in spools {
        let change = spool.finish().await?;
        if !change.is_empty() {
            out.insert(view, change);
        }
    }
    Ok(out)
}
