//! A model run in a child process of its own (`isolate = true`, or `auto` for a heavy model
//! where a memory cgroup can be made): the runner holds the lease, the child runs under a
//! cgroup limited to the lease plus [`spillway_isolate::headroom`] with its own governor, and
//! its output comes back as an Arrow IPC file that is placed (hand-off, sinks) as an in-process
//! model's stream is.
//!
//! ```text
//!   lease (held here) ─▶ inputs as files: sources and file hand-offs by path,
//!                        memory hand-offs and PostgreSQL sources written to IPC in the
//!                        child's folder
//!                     ─▶ spillway worker in its cgroup ─▶ output.arrow ─▶ place()
//!   the child's folder (inputs, spills, output) is removed afterwards, also when cancelled
//! ```

use super::attempt::{Attempt, Plan};
use super::publish::{place, Output};
use super::stage::Folder;
use super::Shared;
use crate::error::{Error, Result};
use crate::results::{Event, Isolated};
use spillway_engine::{session, tables};
use spillway_governor::{Lease, PoolOptions};
use spillway_isolate::{Confinement, Death, StepSpec, TableSpec};
use spillway_project::Model;
use spillway_project::{Class, Isolate};
use spillway_tiers::{Intermediate, Tier};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Whether `model` runs in a child process (its `isolate` setting, and for `auto` its class and
/// whether a memory cgroup can be made here).
pub fn wanted(model: &Model) -> bool {
    match model.settings.isolate {
        _ if super::cluster::wanted(model) => false,
        Isolate::Off => false,
        Isolate::On => true,
        Isolate::Auto => model.settings.class == Class::Heavy && Confinement::detect().has_cgroup(),
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Runs `model` in a child under `lease` (held until its output is placed).
pub(super) async fn run(
    sh: &Shared,
    model: &Model,
    inputs: &[(String, Arc<Intermediate>)],
    plan: &Plan,
    lease: Lease,
    info: &mut Attempt,
) -> Result<Output> {
    let name = &model.name;
    let exe = sh.options.worker.clone().ok_or_else(|| {
        Error::Usage(format!("{name}: isolate is set, but the spillway binary to start `spillway worker` is not known"))
    })?;
    let dir = sh.worker_dir.join(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let folder = Folder::create(dir, sh.temp_quota.clone())?;
    let lease_bytes = lease.bytes();
    // A session of the runner's under the lease: it stages PostgreSQL sources for the child
    // before the child starts, and places the child's output after it is gone.
    let pool = lease.into_pool(PoolOptions {
        step: Some(name.clone()),
        unspillable_reserve: sh.options.unspillable_reserve,
        pressure_aware: true,
        grow_to: None,
    });
    let options = session::SessionOptions::new(plan.partitions, sh.temp_files.clone());
    let ctx = session::context(pool, &options)?;
    let tables = input_tables(sh, model, inputs, &folder, &ctx).await?;
    let budget = lease_bytes + spillway_isolate::headroom(lease_bytes);
    let output = folder.join("output.arrow");
    let spec = StepSpec {
        model: name.clone(),
        sql: model.sql.clone(),
        lease_bytes,
        budget_bytes: budget,
        partitions: plan.partitions,
        no_topk: plan.no_topk,
        unspillable_reserve: sh.options.unspillable_reserve,
        spill_dir: folder.join("spill"),
        max_spill: Some(sh.temp_quota.max().saturating_sub(sh.temp_quota.used())),
        tables,
        output: output.clone(),
    };
    let confinement = Confinement::detect();
    let started = Instant::now();
    let outcome = spillway_isolate::run_child(&exe, &spec, confinement, |pid| {
        sh.emit(Event::ModelIsolated {
            t_ms: sh.now(),
            model: name.clone(),
            pid,
            confinement: confinement.name(),
            limit_bytes: budget,
        })
    })
    .await?;
    let oom = outcome.death == Some(Death::OomKilled);
    let previous_oom = info.isolated.as_ref().is_some_and(|i| i.oom_killed);
    info.isolated = Some(Isolated {
        pid: outcome.pid,
        confinement: outcome.confinement.clone(),
        limit_bytes: outcome.limit_bytes,
        peak_bytes: outcome.peak_bytes,
        oom_killed: oom || previous_oom,
        child_ms: started.elapsed().as_millis() as u64,
    });
    if let Some(r) = &outcome.report {
        info.spilled = r.spilled_bytes;
        info.joins = r.joins.clone();
        info.refused = r.refused.clone();
    }
    match (&outcome.death, &outcome.report) {
        (Some(Death::OomKilled), _) => {
            return Err(Error::OomKilled {
                model: name.clone(),
                pid: outcome.pid,
                confinement: outcome.confinement,
                limit: outcome.limit_bytes,
                peak: outcome.peak_bytes,
            })
        }
        (None, Some(r)) if r.error.is_none() => {}
        (_, Some(r)) if r.error.is_some() => {
            return Err(Error::Child {
                pid: outcome.pid,
                message: r.error.clone().unwrap_or_default(),
                resources_exhausted: r.resources_exhausted,
            })
        }
        (death, _) => {
            let how = match death {
                Some(Death::Exited(code)) => format!("exited with code {code}"),
                Some(Death::Signal(sig)) => format!("was killed by signal {sig}"),
                _ => "ended without a report".to_string(),
            };
            return Err(Error::Child {
                pid: outcome.pid,
                message: format!("the child {how}: {}", outcome.stderr_tail),
                resources_exhausted: false,
            });
        }
    }
    // The output is placed as an in-process model's stream would be, under the same lease.
    let table = "__spillway_isolated_output";
    tables::register(&ctx, table, &output.to_string_lossy()).await?;
    let df = ctx.table(table).await.map_err(spillway_engine::Error::from)?;
    let stream = df.execute_stream().await.map_err(spillway_engine::Error::from)?;
    let heavy = model.settings.class == Class::Heavy;
    let rows = outcome.report.as_ref().map_or(0, |r| r.rows);
    let placed = place(sh, model, &ctx, stream, plan.materialize, heavy, Some((&output, rows))).await;
    drop(ctx);
    drop(folder);
    placed
}

/// Every table the model reads, as a file location: sources (PostgreSQL ones staged to IPC in
/// `folder` through `ctx`), unselected upstream models' published files, and hand-offs (memory
/// ones written to IPC in `folder`).
async fn input_tables(
    sh: &Shared,
    model: &Model,
    inputs: &[(String, Arc<Intermediate>)],
    folder: &Folder,
    ctx: &datafusion::prelude::SessionContext,
) -> Result<Vec<TableSpec>> {
    let file = |name: &String, location: String| TableSpec { name: name.clone(), location, ipc: None };
    let name = &model.name;
    let mut tables = Vec::new();
    for table in &sh.dag.sources[name] {
        if sh.sources.postgres.contains_key(table) {
            tables.push(stage_postgres(sh, ctx, table, folder).await?);
            continue;
        }
        let location = sh
            .sources
            .locations
            .get(table)
            .ok_or_else(|| Error::Usage(format!("source table {table:?} has no data")))?;
        tables.push(file(table, location.clone()));
    }
    for (up, intermediate) in inputs {
        let info = intermediate.info();
        let stats = Some((info.rows, info.bytes));
        tables.push(match (intermediate.path(), intermediate.batches()) {
            (Some(path), _) if info.tier == Tier::Ipc => {
                TableSpec { name: up.clone(), location: path.to_string_lossy().into_owned(), ipc: stats }
            }
            (Some(path), _) => file(up, path.to_string_lossy().into_owned()),
            (None, Some(batches)) => {
                let path = folder.join(&format!("{up}.arrow"));
                write_ipc(&path, intermediate.schema(), batches)?;
                folder.reserve_written(&path)?;
                TableSpec { name: up.clone(), location: path.to_string_lossy().into_owned(), ipc: stats }
            }
            (None, None) => return Err(Error::Usage(format!("{up}: its hand-off holds no data"))),
        });
    }
    for up in &sh.dag.upstream[name] {
        if let Some(location) = sh.external.get(up) {
            tables.push(file(up, location.clone()));
        }
    }
    Ok(tables)
}

/// A PostgreSQL source read whole (the child cannot reach the runner's connections) into an Arrow
/// IPC file for the child, batch by batch under the runner's lease.
async fn stage_postgres(
    sh: &Shared,
    ctx: &datafusion::prelude::SessionContext,
    table: &str,
    folder: &Folder,
) -> Result<TableSpec> {
    sh.sources.register(ctx, table).await?;
    let (path, rows, bytes) =
        folder.write_table(ctx, table, &format!("{table}.arrow"), spillway_tiers::FileFormat::Arrow).await?;
    ctx.deregister_table(table).map_err(spillway_engine::Error::from)?;
    Ok(TableSpec { name: table.to_string(), location: path.to_string_lossy().into_owned(), ipc: Some((rows, bytes)) })
}

/// A memory hand-off written as an Arrow IPC file for the child.
fn write_ipc(
    path: &Path,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::record_batch::RecordBatch],
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    let arrow = |e: arrow::error::ArrowError| Error::io(path, std::io::Error::other(e));
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), schema).map_err(arrow)?;
    for b in batches {
        w.write(b).map_err(arrow)?;
    }
    w.finish().map_err(arrow)?;
    Ok(())
}
