//! The views' sinks, published together after each transaction: contents sinks get the whole
//! view, changelog sinks the transaction's change (one file per transaction), PostgreSQL sinks
//! a transaction of their own that records the log position with the rows.

use crate::error::{Error, Result};
use crate::host::{Live, Views};
use arrow::array::RecordBatch;
use spillway_postgres::view_sink::{self, Publication, ViewSink};
use spillway_views::{Change, ViewError, ZSet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rows of a view's contents decoded at once when a contents sink is written.
const CONTENTS_CHUNK_ROWS: usize = 8192;

/// Which sinks [`Views::publish`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// Every view's contents sinks (after population and replay).
    AllContents,
    /// The changed views' contents and changelog sinks (after a transaction).
    Changed,
    /// Only the changelog files of a replayed transaction that are missing.
    Changelogs,
}

impl Views {
    /// Publishes every contents sink once per process, so that sinks reflect the state after a
    /// population, or after a crash between a commit and its publication. Later calls do nothing.
    pub async fn publish_state(&mut self) -> Result<()> {
        self.writable()?;
        if !self.published_once {
            self.publish(&BTreeMap::new(), Publish::AllContents, self.last_seq()).await?;
            self.published_once = true;
            self.write_status()?;
        }
        Ok(())
    }

    /// Publishes sinks together: contents sinks get the whole view, changelog sinks transaction
    /// `seq`'s change (a changelog file already written is left as it is).
    pub(crate) async fn publish(&mut self, changed: &BTreeMap<String, Change>, what: Publish, seq: u64) -> Result<()> {
        let all = what == Publish::AllContents;
        let mut staged = Vec::new();
        for def in self.project.sinks.values() {
            if self.stopped.contains_key(&def.model) {
                continue;
            }
            let Some(live) = self.live.get(&def.model) else { continue };
            let Some(path) = def.file() else { continue };
            let path = self.project.dir.join(path);
            let view_err = |source: ViewError| Error::View {
                view: def.model.clone(),
                path: self.project.views[&def.model].path.clone(),
                line: 1,
                error: source,
            };
            let rows = if def.changelog.unwrap_or(false) {
                if what == Publish::AllContents {
                    continue;
                }
                let Some(change) = changed.get(&def.model) else { continue };
                let file = changelog_path(&path, seq);
                if file.exists() {
                    continue;
                }
                // Written a piece at a time (a change spooled to disk is never read whole).
                Some((file, change.weighted_stream(&self.ctx.runtime_env()).map_err(view_err)?))
            } else if what != Publish::Changelogs && (all || changed.contains_key(&def.model)) {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                let options = spillway_tiers::WriteOptions::default();
                let file = match live {
                    // A chunk at a time, each reserved before it is decoded: the view's contents
                    // are never copied whole.
                    Live::Incremental(v) => {
                        let schema = spillway_views::relax_nullability(&v.schema());
                        spillway_tiers::file::stage_with(&path, &schema, &options, |write| {
                            for chunk in v.contents_chunks(CONTENTS_CHUNK_ROWS) {
                                write(&chunk.map_err(view_err)?)?;
                            }
                            Ok::<(), Error>(())
                        })?
                    }
                    // Its rows are its state: written as they are.
                    Live::Recompute(r) => {
                        spillway_tiers::file::stage_with(&path, &r.rows.schema(), &options, |write| {
                            Ok::<(), Error>(write(&r.rows)?)
                        })?
                    }
                };
                staged.push(file);
                continue;
            } else {
                None
            };
            let Some((file, rows)) = rows else { continue };
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            staged
                .push(spillway_tiers::file::stage_stream(rows, &file, &spillway_tiers::WriteOptions::default()).await?);
        }
        for s in staged {
            s.publish()?;
        }
        if what != Publish::Changelogs {
            self.publish_postgres(changed, all, seq).await?;
        }
        Ok(())
    }

    /// The views' PostgreSQL sinks: each its own PostgreSQL transaction that records `seq` with
    /// the rows. `all`: every sink that does not hold transaction `seq` yet gets its whole view
    /// (after population, or after a crash between the log's commit and the sink's).
    pub(crate) async fn publish_postgres(
        &mut self,
        changed: &BTreeMap<String, Change>,
        all: bool,
        seq: u64,
    ) -> Result<()> {
        let sinks: Vec<(String, String, spillway_postgres::SinkSpec)> = self
            .project
            .sinks
            .iter()
            .filter(|(_, d)| self.live.contains_key(&d.model) && !self.stopped.contains_key(&d.model))
            .filter_map(|(n, d)| match d.target(n, &self.project.dir) {
                Ok(spillway_project::SinkTarget::Postgres { spec, optional })
                    if !(optional && spec.conn.env_unset()) =>
                {
                    Some((n.clone(), d.model.clone(), spec))
                }
                _ => None,
            })
            .collect();
        for (name, model, spec) in sinks {
            let change = changed.get(&model);
            if !all && change.is_none() {
                continue;
            }
            if all && view_sink::progress(&spec).await? == Some(seq) {
                continue;
            }
            if !self.pg_sinks.contains_key(&name) {
                self.pg_sinks.insert(name.clone(), ViewSink::connect(&spec).await?);
            }
            let whole = match change {
                Some(_) if !all && spec.mode == spillway_postgres::Mode::Upsert => None,
                _ => Some(self.contents(&model)?),
            };
            let sink = self.pg_sinks.get_mut(&name).expect("connected");
            let view_err = |e: ViewError| Error::View {
                view: model.clone(),
                path: self.project.views[&model].path.clone(),
                line: 1,
                error: e,
            };
            let result = match (change, &whole) {
                (_, Some(whole)) => sink.publish(seq, Publication::Whole(&whole.batch)).await,
                (Some(change), None) => {
                    // Sent as one PostgreSQL statement pair: a change spooled to disk is read whole here.
                    let z = change.collect(&self.ctx.runtime_env()).await.map_err(view_err)?;
                    let (retracted, inserted) = split_by_sign(&z).map_err(view_err)?;
                    sink.publish(seq, Publication::Change { retracted: &retracted, inserted: &inserted }).await
                }
                (None, None) => unreachable!("a change, or the whole view"),
            };
            if let Err(e) = result {
                self.pg_sinks.remove(&name); // a broken connection is made again next time
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// Rows of negative weight and rows of positive weight, each repeated as often as its weight.
pub(crate) fn split_by_sign(z: &ZSet) -> std::result::Result<(RecordBatch, RecordBatch), ViewError> {
    let z = z.consolidate()?;
    let (mut neg, mut pos) = (Vec::new(), Vec::new());
    for (i, w) in z.weights.iter().enumerate() {
        let to = if *w < 0 { &mut neg } else { &mut pos };
        to.extend(std::iter::repeat_n(i as u32, w.unsigned_abs() as usize));
    }
    let take = |idx: &[u32]| -> std::result::Result<RecordBatch, ViewError> {
        let idx = arrow::array::UInt32Array::from(idx.to_vec());
        Ok(arrow::compute::take_record_batch(&z.batch, &idx)?)
    };
    Ok((take(&neg)?, take(&pos)?))
}

/// `output/v.parquet`'s file for transaction `seq`: `output/v.00000042.parquet`.
pub fn changelog_path(path: &Path, seq: u64) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}.{seq:08}.{ext}"))
}
