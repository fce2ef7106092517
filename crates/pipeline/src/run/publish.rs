//! Where a model's rows go, and publication of its sinks: all of a model's sinks are published
//! together, or none is.
//!
//! ```text
//!   check ─▶ rows counted (must be none)
//!   read by no model, one sink ─▶ streamed straight into it ─┐
//!   otherwise ─▶ hand-off store (memory | IPC | Parquet) ─────┤ one stream per sink
//!                                                             ▼
//!   1. stage: every file sink written to .NAME.spillway-tmp-<owner> beside it (nothing visible)
//!   2. prepare: every PostgreSQL load sent, its transaction left open (nothing visible)
//!   3. commit: the PostgreSQL loads, one after another
//!   4. publish: every staged file synced, renamed into place, its folder synced
//! ```
//!
//! A failure in 1 or 2 publishes nothing: staged files are removed and open transactions rolled
//! back. A failure in 3 or 4 (a lost connection at COMMIT, a rename refused) stops there and the
//! error says which sinks were published and which were not ([`Error::Publish`]).

use super::Shared;
use crate::error::{Error, Result};
use crate::results::SinkResult;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use spillway_project::{Model, SinkTarget};
use spillway_tiers::file::{Staged, WriteOptions};
use spillway_tiers::{read, Hints, Intermediate, Materialize};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// What one attempt produced.
pub(super) struct Output {
    pub(super) tier: String,
    pub(super) reason: String,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) intermediate: Option<Arc<Intermediate>>,
    pub(super) sinks: Vec<SinkResult>,
    /// The checkpoint file, kept beyond the run.
    pub(super) kept: Option<PathBuf>,
}

/// Why an optional postgres sink is skipped (its URL variable is unset); `None` to publish.
fn skipped_because(target: &SinkTarget) -> Option<String> {
    match target {
        SinkTarget::Postgres { spec, optional: true } if spec.conn.env_unset() => Some(format!(
            "skipped: optional, and {} is not set",
            spec.conn.url_env.as_deref().unwrap_or("its URL variable")
        )),
        _ => None,
    }
}

/// A sink written but not yet visible.
enum Pending {
    File { sink: String, staged: Staged, started: Instant },
    Postgres { sink: String, load: Box<spillway_postgres::PreparedLoad> },
}

impl Pending {
    fn sink(&self) -> &str {
        match self {
            Pending::File { sink, .. } | Pending::Postgres { sink, .. } => sink,
        }
    }
}

/// Writes `stream` to `target` without making it visible: a staged file, or a PostgreSQL load
/// whose transaction is open.
async fn stage(sink: &str, target: &SinkTarget, stream: SendableRecordBatchStream) -> Result<Pending> {
    match target {
        SinkTarget::File(path) => {
            let started = Instant::now();
            let staged = spillway_tiers::file::stage_stream(stream, path, &WriteOptions::default()).await?;
            Ok(Pending::File { sink: sink.to_string(), staged, started })
        }
        SinkTarget::Postgres { spec, .. } => {
            let load = spillway_postgres::prepare(spec, stream).await?;
            Ok(Pending::Postgres { sink: sink.to_string(), load: Box::new(load) })
        }
    }
}

/// Publishes staged sinks: PostgreSQL loads committed first (the likelier to fail), then files
/// renamed. On a failure the rest is rolled back or removed, and the error lists what was
/// published.
async fn publish_all(model: &str, pending: Vec<Pending>) -> Result<Vec<SinkResult>> {
    spillway_faults::point("sink-staged");
    let (loads, files): (Vec<Pending>, Vec<Pending>) =
        pending.into_iter().partition(|p| matches!(p, Pending::Postgres { .. }));
    let mut done: Vec<SinkResult> = Vec::new();
    let mut order: std::collections::VecDeque<Pending> = loads.into_iter().chain(files).collect();
    while let Some(p) = order.pop_front() {
        if !done.is_empty() {
            spillway_faults::point("publish-between-sinks");
        }
        let name = p.sink().to_string();
        let result = match p {
            Pending::Postgres { sink, load } => load
                .commit()
                .await
                .map(|r| SinkResult {
                    name: sink,
                    path: PathBuf::from(r.destination),
                    rows: r.rows,
                    bytes: r.bytes,
                    elapsed_ms: r.elapsed_ms,
                    wal_bytes: r.wal_bytes,
                    skipped: None,
                })
                .map_err(Error::from),
            Pending::File { sink, staged, started } => {
                let path = staged.dest().to_path_buf();
                spillway_faults::point("publish-before-rename");
                staged
                    .publish()
                    .map(|w| SinkResult {
                        name: sink,
                        path,
                        rows: w.rows,
                        bytes: w.bytes,
                        elapsed_ms: started.elapsed().as_millis() as u64,
                        wal_bytes: None,
                        skipped: None,
                    })
                    .map_err(Error::from)
            }
        };
        match result {
            Ok(r) => done.push(r),
            Err(cause) => {
                let not_published: Vec<String> =
                    std::iter::once(name).chain(order.iter().map(|p| p.sink().to_string())).collect();
                discard(order).await;
                return Err(Error::Publish {
                    model: model.to_string(),
                    published: done.into_iter().map(|r| r.name).collect(),
                    not_published,
                    cause: Box::new(cause),
                });
            }
        }
    }
    Ok(done)
}

/// Rolls back open loads and removes staged files.
async fn discard(pending: impl IntoIterator<Item = Pending>) {
    for p in pending {
        match p {
            Pending::Postgres { load, .. } => load.rollback().await,
            Pending::File { staged, .. } => drop(staged),
        }
    }
}

/// Where a model's rows go: a check's are counted (and must be none); a model read by no
/// selected model and published by exactly one sink streams straight into it; everything else
/// is handed off by size and then published to its sinks, together. `written` is the Arrow IPC
/// file (and its rows) `stream` reads, when an isolated model's child wrote one: a hand-off
/// that may be IPC adopts that file instead of copying it.
pub(super) async fn place(
    sh: &Shared,
    model: &Model,
    ctx: &datafusion::prelude::SessionContext,
    mut stream: SendableRecordBatchStream,
    materialize: Materialize,
    heavy: bool,
    written: Option<(&std::path::Path, u64)>,
) -> Result<Output> {
    let name = &model.name;
    if model.settings.check {
        let mut rows = 0u64;
        let mut sample = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(spillway_engine::Error::from)?;
            if rows < 5 && batch.num_rows() > 0 {
                sample.push(batch.slice(0, batch.num_rows().min(5 - rows as usize)));
            }
            rows += batch.num_rows() as u64;
        }
        if rows > 0 {
            let shown = arrow::util::pretty::pretty_format_batches(&sample).map(|t| t.to_string()).unwrap_or_default();
            return Err(Error::Check { model: name.clone(), rows, sample: shown });
        }
        return Ok(Output {
            tier: "check".into(),
            reason: "a check: passes with no rows".into(),
            rows,
            bytes: 0,
            intermediate: None,
            sinks: vec![],
            kept: None,
        });
    }
    let mut sinks: Vec<(&String, SinkTarget)> = Vec::new();
    let mut skipped = Vec::new();
    for (n, def) in sh.project.sinks.iter().filter(|(_, s)| &s.model == name) {
        // Checked when the project was loaded.
        let target = def.target(n, &sh.project.dir).map_err(|m| Error::Usage(format!("[sinks.{n}]: {m}")))?;
        if let Some(why) = skipped_because(&target) {
            skipped.push(SinkResult {
                name: n.clone(),
                path: PathBuf::new(),
                rows: 0,
                bytes: 0,
                elapsed_ms: 0,
                wal_bytes: None,
                skipped: Some(why),
            });
            continue;
        }
        if let SinkTarget::File(path) = &target {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
        }
        sinks.push((n, target));
    }
    let readers = sh.consumers.get(name).copied().unwrap_or(0);
    if readers == 0 && sinks.len() == 1 && sh.options.materialize.is_none() && !model.settings.checkpoint {
        let (sink, target) = &sinks[0];
        let pending = stage(sink, target, stream).await?;
        let mut published = publish_all(name, vec![pending]).await?;
        let first = published[0].clone();
        published.extend(skipped);
        return Ok(Output {
            tier: "sink".into(),
            reason: format!("read by no other model: streamed straight into sink {sink}"),
            rows: first.rows,
            bytes: first.bytes,
            intermediate: None,
            sinks: published,
            kept: None,
        });
    }
    // Read by the cluster's executors: Parquet on a path they reach. Read only by models in
    // other processes: memory would have to be written out for each.
    let selected_readers = || sh.dag.downstream[name].iter().filter(|d| sh.consumers.contains_key(*d));
    let cluster_readers = selected_readers().any(|d| super::cluster::wanted(&sh.project.models[d]));
    let isolated_readers = readers > 0 && selected_readers().all(|d| super::isolated::wanted(&sh.project.models[d]));
    let (materialize, chosen_because) = match materialize {
        Materialize::Auto | Materialize::Memory | Materialize::Ipc if cluster_readers && !model.settings.checkpoint => {
            (
                Materialize::Parquet,
                Some("read on the Ballista cluster: Parquet (the memory tier does not cross)".into()),
            )
        }
        Materialize::Auto if isolated_readers && !model.settings.checkpoint => {
            (Materialize::Ipc, Some("read only by isolated models: Arrow IPC for their child processes".into()))
        }
        other => (other, None),
    };
    let hints = Hints {
        materialize,
        checkpoint: model.settings.checkpoint,
        heavy_running: sh.heavy_running.load(Ordering::Relaxed) > usize::from(heavy),
        expected_bytes: None,
        chosen_because,
    };
    let intermediate = match written {
        _ if model.settings.checkpoint => {
            sh.store.write_kept(name, stream, &crate::manifest::state_path(&sh.project.dir, name)).await?
        }
        Some((file, rows)) if matches!(materialize, Materialize::Auto | Materialize::Ipc) => {
            drop(stream);
            let why = if isolated_readers {
                "written by its child process as Arrow IPC, read by isolated models: taken as is"
            } else {
                "written by its child process as Arrow IPC: taken as is (no copy)"
            };
            sh.store.adopt_ipc(name, file, rows, why)?
        }
        _ => sh.store.write(name, stream, &hints).await?,
    };
    let info = intermediate.info().clone();
    let mut pending = Vec::new();
    for (i, (sink, target)) in sinks.into_iter().enumerate() {
        let table = format!("__spillway_sink_{i}");
        let staged = async {
            read::register(ctx, &table, &intermediate, 1).await?;
            let df = ctx.table(table.as_str()).await.map_err(spillway_engine::Error::from)?;
            let stream = df.execute_stream().await.map_err(spillway_engine::Error::from)?;
            stage(sink, &target, stream).await
        }
        .await;
        match staged {
            Ok(p) => pending.push(p),
            Err(e) => {
                discard(pending).await;
                return Err(e);
            }
        }
    }
    let mut published = publish_all(name, pending).await?;
    published.extend(skipped);
    Ok(Output {
        tier: info.tier.to_string(),
        reason: info.reason,
        rows: info.rows,
        bytes: info.bytes,
        kept: model.settings.checkpoint.then(|| info.path.clone()).flatten(),
        intermediate: Some(intermediate),
        sinks: published,
    })
}
