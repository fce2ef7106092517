//! `spillway sql`: one query under the budget, streamed to the terminal or a file.

use crate::args::{PoolKind, SqlArgs};
use crate::settings::Settings;
use anyhow::{Context, Result};
use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool, MemoryPool, UnboundedMemoryPool};
use datafusion::prelude::SessionContext;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use spillway_engine::query::JoinReport;
use spillway_engine::{output, query, session, tables};
use spillway_governor::{fmt_bytes, Governor, LeasePool, LeaseRequest, PoolOptions, PoolStats};
use spillway_tiers::TempSpace;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

/// What `--stats-json` writes.
#[derive(Debug, Serialize)]
struct Stats {
    rows: u64,
    elapsed_ms: u64,
    pool: &'static str,
    budget_bytes: u64,
    lease_bytes: u64,
    /// Anonymous resident memory (what the budget governs: RSS less code pages).
    peak_resident_bytes: u64,
    /// jemalloc's resident bytes.
    peak_jemalloc_resident_bytes: u64,
    /// Full RSS including the binary's code pages.
    peak_rss_bytes: u64,
    spilled_bytes: u64,
    pool_stats: Option<PoolStats>,
    output_bytes: Option<u64>,
    /// Order-independent checksum of the result (`--checksum`).
    checksum: Option<String>,
    /// Each hash join: whether it went out of core, buckets, depth, bytes spilled.
    joins: Vec<JoinReport>,
}

pub async fn run(settings: &Settings, args: SqlArgs) -> Result<()> {
    let governor = Governor::new(settings.governor.clone())?;
    let temp = TempSpace::open(&settings.spill_dir, settings.max_spill)?;
    let mut options = session::SessionOptions::new(settings.cores.count, temp.temp_files().clone());
    options.grace_joins = !args.native_joins;
    let budget = settings.budget.bytes;

    let (lease_pool, stock_pool): (Option<Arc<LeasePool>>, Option<Arc<dyn MemoryPool>>) = match args.pool {
        PoolKind::Spillway => {
            let lease = governor.lease(LeaseRequest::bytes("sql", governor.leasable()).heavy()).await?;
            let pool = lease.into_pool(PoolOptions {
                step: Some("sql".into()),
                unspillable_reserve: settings.unspillable_reserve,
                pressure_aware: true,
            });
            (Some(pool), None)
        }
        kind => {
            let pool: Arc<dyn MemoryPool> = match kind {
                PoolKind::Greedy => Arc::new(GreedyMemoryPool::new(budget as usize)),
                PoolKind::Fair => Arc::new(FairSpillPool::new(budget as usize)),
                _ => Arc::new(UnboundedMemoryPool::default()),
            };
            (None, Some(pool))
        }
    };

    let started = Instant::now();
    let spinner = spinner(&governor);
    let work = async {
        let ctx = match (&lease_pool, &stock_pool) {
            (Some(pool), _) => session::context(pool.clone(), &options)?,
            (None, Some(pool)) => session::stock_context(pool.clone(), &options)?,
            (None, None) => unreachable!("one pool is set"),
        };
        execute(&ctx, &args).await
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Some(s) = &spinner {
        s.finish_and_clear();
    }
    let Executed { rows, output_bytes, checksum, spilled, joins } = outcome.context("query failed")?;
    governor.sample_now();
    let stats = Stats {
        rows,
        elapsed_ms: started.elapsed().as_millis() as u64,
        pool: match args.pool {
            PoolKind::Spillway => "spillway",
            PoolKind::Greedy => "greedy",
            PoolKind::Fair => "fair",
            PoolKind::Unbounded => "unbounded",
        },
        budget_bytes: budget,
        lease_bytes: lease_pool.as_ref().map_or(budget, |p| p.lease().bytes()),
        peak_resident_bytes: governor.timeline().peak_anon(),
        peak_jemalloc_resident_bytes: governor.timeline().peak_resident(),
        peak_rss_bytes: governor.timeline().peak_rss(),
        spilled_bytes: spilled,
        pool_stats: lease_pool.as_ref().map(|p| p.stats()),
        output_bytes,
        checksum,
        joins,
    };
    let out_of_core: Vec<&JoinReport> = stats.joins.iter().filter(|j| j.out_of_core_partitions > 0).collect();
    let joins_note = match out_of_core.len() {
        0 => String::new(),
        n => format!(
            " · {n} join(s) out of core ({} buckets, depth {})",
            out_of_core.iter().map(|j| j.buckets).sum::<usize>(),
            out_of_core.iter().map(|j| j.max_depth).max().unwrap_or(0)
        ),
    };
    eprintln!(
        "{} rows in {:.2}s · peak resident {} (RSS {}) of {} budget · spilled {}{joins_note}{}",
        stats.rows,
        stats.elapsed_ms as f64 / 1000.0,
        fmt_bytes(stats.peak_resident_bytes),
        fmt_bytes(stats.peak_rss_bytes),
        fmt_bytes(budget),
        fmt_bytes(stats.spilled_bytes),
        args.output.as_ref().map_or(String::new(), |p| format!(" · wrote {}", p.display())),
    );
    if let Some(path) = &args.stats_json {
        let text = serde_json::to_string_pretty(&stats)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    drop(lease_pool);
    drop(temp);
    Ok(())
}

/// What a query did.
struct Executed {
    rows: u64,
    output_bytes: Option<u64>,
    checksum: Option<String>,
    spilled: u64,
    joins: Vec<JoinReport>,
}

/// Registers the tables, runs `args.sql` and sends its result where `args` says.
async fn execute(ctx: &SessionContext, args: &SqlArgs) -> Result<Executed> {
    for arg in &args.tables {
        let (name, path) = tables::parse_table_arg(arg)?;
        tables::register(ctx, &name, &path).await?;
    }
    for dir in &args.data {
        tables::register_data_dir(ctx, dir).await?;
    }
    let q = query::run_sql(ctx, &args.sql).await?;
    let plan = q.plan.clone();
    let (rows, output_bytes, checksum) = match &args.output {
        _ if args.checksum => {
            let (rows, sum) = output::checksum(q.stream).await?;
            println!("{rows} rows, checksum {sum}");
            (rows, None, Some(sum))
        }
        Some(path) => {
            let w = output::write_stream(q.stream, path, &output::WriteOptions::default()).await?;
            (w.rows, Some(w.bytes), None)
        }
        None => {
            let max = (args.max_rows > 0).then_some(args.max_rows);
            let mut stdout = std::io::stdout().lock();
            (output::print_table(q.stream, max, &mut stdout).await?, None, None)
        }
    };
    Ok(Executed {
        rows,
        output_bytes,
        checksum,
        spilled: query::spilled_bytes(&plan),
        joins: query::join_reports(&plan),
    })
}

/// A spinner with live memory figures, when stderr is a terminal.
fn spinner(governor: &Governor) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").ok()?);
    super::live::show_memory(&bar, governor);
    Some(bar)
}
