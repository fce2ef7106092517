//! The child's side (`spillway worker`): reads its [`StepSpec`] from stdin, runs its own
//! governor with the lease as its budget (and no ledger: the runner's lease already counts on
//! it), registers the inputs, runs the SQL, writes the output as an Arrow IPC file and prints
//! its [`StepReport`] as one JSON line on stdout.

use crate::{StepReport, StepSpec};
use futures::StreamExt;
use spillway_engine::{query, session, tables};
use spillway_governor::{Governor, GovernorConfig, LeaseRequest, PoolOptions};
use spillway_tiers::file::{FileFormat, FileSink, WriteOptions};
use spillway_tiers::TempSpace;
use std::io::Read;

/// Runs the step read from `input` and prints its report; the exit code (0 unless the spec
/// could not be read or the report written).
pub fn main(mut input: impl Read) -> i32 {
    let mut text = String::new();
    if let Err(e) = input.read_to_string(&mut text) {
        eprintln!("spillway worker: reading the step's spec from stdin: {e}");
        return 2;
    }
    let spec: StepSpec = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spillway worker: the step's spec is not valid: {e}");
            return 2;
        }
    };
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(spec.partitions.max(1)).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("spillway worker: starting a runtime: {e}");
                return 2;
            }
        };
    let report = runtime.block_on(run(&spec));
    match serde_json::to_string(&report) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("spillway worker: writing the report: {e}");
            2
        }
    }
}

async fn run(spec: &StepSpec) -> StepReport {
    let mut report = StepReport::default();
    if let Err(e) = run_into(spec, &mut report).await {
        report.resources_exhausted = e.is_resources_exhausted();
        report.error = Some(e.to_string());
    }
    report
}

async fn run_into(spec: &StepSpec, report: &mut StepReport) -> Result<(), spillway_engine::Error> {
    // The lease is all of the child's budget but its headroom.
    let mut config = GovernorConfig::new(spec.budget_bytes);
    config.headroom = (1.0 - spec.lease_bytes as f64 / spec.budget_bytes.max(1) as f64).clamp(0.0, 0.89);
    config.lease_timeout = None;
    let governor = Governor::new(config).map_err(spillway_engine::Error::from)?;
    let lease_bytes = spec.lease_bytes.min(governor.leasable());
    let lease = governor.lease(LeaseRequest::bytes(spec.model.clone(), lease_bytes)).await?;
    let pool = lease.into_pool(PoolOptions {
        step: Some(spec.model.clone()),
        unspillable_reserve: spec.unspillable_reserve,
        pressure_aware: true,
        grow_to: None,
    });
    let temp = TempSpace::open(&spec.spill_dir, spec.max_spill)?;
    let mut options = session::SessionOptions::new(spec.partitions, temp.temp_files().clone());
    options.no_topk = spec.no_topk;
    let ctx = session::context(pool.clone(), &options)?;
    for t in &spec.tables {
        match t.ipc {
            Some((rows, bytes)) => {
                let table = spillway_tiers::read::ipc_table(
                    std::path::Path::new(&t.location),
                    spec.partitions,
                    rows as usize,
                    bytes as usize,
                )?;
                ctx.register_table(t.name.as_str(), table)?;
            }
            None => tables::register(&ctx, &t.name, &t.location).await?,
        }
    }
    let result = async {
        let q = query::run_sql(&ctx, &spec.sql).await?;
        let plan = q.plan.clone();
        let mut stream = q.stream;
        // A hand-off, not a publication: no staging name, no fsync (the runner removes it).
        let mut sink = FileSink::create(FileFormat::Arrow, &spec.output, &stream.schema(), &WriteOptions::default())?;
        while let Some(batch) = stream.next().await {
            sink.write(&batch?)?;
        }
        Ok::<_, spillway_engine::Error>((plan, sink.finish()?))
    }
    .await;
    report.refused = pool.refused_unspillable();
    report.peak_reserved = pool.stats().peak_reserved;
    let (plan, (rows, bytes)) = result?;
    report.rows = rows;
    report.bytes = bytes;
    report.spilled_bytes = query::spilled_bytes(&plan);
    report.joins = query::join_reports(&plan);
    Ok(())
}
