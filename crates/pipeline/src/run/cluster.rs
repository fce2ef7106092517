//! A model run on the Ballista cluster (`engine = "ballista"`): its query is planned here and
//! run by the cluster's executors; its rows come back here and are placed (hand-off, sinks) as
//! a local model's are. The executors read every input as a file on a path both sides reach:
//!
//! ```text
//!   file sources, Parquet hand-offs, published files ─▶ registered by absolute path
//!   memory and IPC hand-offs, PostgreSQL sources     ─▶ written to Parquet in a folder of the
//!                                                       run's temp space, removed afterwards
//!   the lease (small: profile S at most)            ─▶ what the client holds of the rows
//! ```
//!
//! An output read by a model on the cluster is handed off as Parquet in the first place
//! (`publish.rs`), so staging hand-offs is the exception.

use super::attempt::{Attempt, Plan};
use super::publish::{place, Output};
use super::stage::Folder;
use super::Shared;
use crate::error::{Error, Result};
use crate::results::{Event, OnCluster};
use spillway_engine::{session, tables};
use spillway_governor::{Lease, PoolOptions};
use spillway_project::Engine;
use spillway_project::Model;
use spillway_tiers::{read, FileFormat, Intermediate, Tier};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Whether `model` runs on the cluster.
pub fn wanted(model: &Model) -> bool {
    model.settings.engine == Engine::Ballista
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Runs `model` on the cluster under `lease` (held until its output is placed).
pub(super) async fn run(
    sh: &Shared,
    model: &Model,
    inputs: &[(String, Arc<Intermediate>)],
    plan: &Plan,
    lease: Lease,
    info: &mut Attempt,
) -> Result<Output> {
    let name = &model.name;
    let url = sh.project.cluster.clone().ok_or_else(|| Error::Usage(format!("{name}: no Ballista cluster is set")))?;
    let dir = sh.worker_dir.join(format!("{name}-cluster-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let folder = Folder::create(dir, sh.temp_quota.clone())?;
    let pool = lease.into_pool(PoolOptions {
        step: Some(name.clone()),
        unspillable_reserve: sh.options.unspillable_reserve,
        pressure_aware: true,
        grow_to: None,
    });
    // Here: staging inputs, placing the output. There: the model's query.
    let local = session::context(pool.clone(), &session::SessionOptions::new(plan.partitions, sh.temp_files.clone()))?;
    let remote = spillway_cluster::session(&url, pool, name).await?;
    let mut staged = Vec::new();
    for table in &sh.dag.sources[name] {
        let location = if sh.sources.postgres.contains_key(table) {
            sh.sources.register(&local, table).await?;
            let (path, _, bytes) =
                folder.write_table(&local, table, &format!("{table}.parquet"), FileFormat::Parquet).await?;
            staged.push((table.clone(), bytes));
            local.deregister_table(table.as_str()).map_err(spillway_engine::Error::from)?;
            path.to_string_lossy().into_owned()
        } else {
            let location = sh
                .sources
                .locations
                .get(table)
                .ok_or_else(|| Error::Usage(format!("source table {table:?} has no data")))?;
            absolute(location)
        };
        tables::register(&remote, table, &location).await?;
    }
    for (up, intermediate) in inputs {
        let location = match intermediate.path() {
            Some(path) if intermediate.info().tier == Tier::Parquet => absolute(&path.to_string_lossy()),
            _ => {
                read::register(&local, up, intermediate, 1).await?;
                let (path, _, bytes) =
                    folder.write_table(&local, up, &format!("{up}.parquet"), FileFormat::Parquet).await?;
                staged.push((up.clone(), bytes));
                local.deregister_table(up.as_str()).map_err(spillway_engine::Error::from)?;
                path.to_string_lossy().into_owned()
            }
        };
        tables::register(&remote, up, &location).await?;
    }
    for up in &sh.dag.upstream[name] {
        if let Some(location) = sh.external.get(up) {
            tables::register(&remote, up, &absolute(location)).await?;
        }
    }
    sh.emit(Event::ModelOnCluster { t_ms: sh.now(), model: name.clone(), url: url.to_string() });
    let df = remote.sql(&model.sql).await.map_err(spillway_engine::Error::from)?;
    let physical = df.create_physical_plan().await.map_err(spillway_engine::Error::from)?;
    let stream = datafusion::physical_plan::execute_stream(physical.clone(), remote.task_ctx())
        .map_err(spillway_engine::Error::from)?;
    // Dropped (the model cancelled) or failed here before the last row: the job is cancelled.
    let job = spillway_cluster::JobGuard::new(&url, physical);
    let placed = place(sh, model, &local, stream, plan.materialize, false, None).await;
    info.cluster = Some(OnCluster { url: url.to_string(), job: job.info().unwrap_or_default(), staged });
    if placed.is_ok() {
        job.finish();
    }
    drop(remote);
    drop(local);
    drop(folder);
    placed
}

/// `location` as an absolute path (the executors do not run in this folder).
fn absolute(location: &str) -> String {
    std::path::absolute(Path::new(location)).map_or_else(|_| location.to_string(), |p| p.to_string_lossy().into_owned())
}
