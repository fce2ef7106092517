//! `spillway sql`: the session under one lease of the budget (or a stock DataFusion pool), its
//! tables, and where its statements come from (an argument, `-f FILE`, standard input, or the
//! interactive shell at a terminal); `spillway-shell` runs them.

use crate::args::{PoolKind, SqlArgs};
use crate::settings::Settings;
use anyhow::{Context, Result};
use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool, MemoryPool, UnboundedMemoryPool};
use datafusion::prelude::SessionContext;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use spillway_engine::query::JoinReport;
use spillway_engine::{session, tables};
use spillway_governor::{fmt_bytes, Governor, LeasePool, LeaseRequest, PoolOptions, PoolStats};
use spillway_project::sources::Generator;
use spillway_project::{Config, Project};
use spillway_shell::{interactive, project, script, Shell, Target};
use spillway_tiers::TempSpace;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
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

pub async fn run(settings: &Settings, config: &Config, args: SqlArgs) -> Result<()> {
    let input = Input::of(&args)?;
    if matches!(input, Input::Terminal) && (args.output.is_some() || args.checksum || args.stats_json.is_some()) {
        anyhow::bail!(
            "--output, --checksum and --stats-json need SQL to run: give it as an argument, with -f or on stdin"
        );
    }
    let governor = Governor::new(settings.governor.clone())?;
    let temp = TempSpace::open(&settings.spill_dir, settings.max_spill)?;
    let mut options = session::SessionOptions::new(settings.cores.count, temp.temp_files().clone());
    options.grace_joins = !args.native_joins;
    let budget = settings.budget.bytes;

    let (lease_pool, stock_pool): (Option<Arc<LeasePool>>, Option<Arc<dyn MemoryPool>>) = match args.pool {
        PoolKind::Spillway => {
            // The interactive shell may sit idle for hours between statements: its lease is
            // elastic, holding from the machine what its statements use. Statements given on the
            // command line, in a file or on stdin take the whole budget at once (waiting for it).
            let interactive = matches!(input, Input::Terminal);
            let leasable = governor.leasable();
            let start = if interactive { (spillway_governor::GROW_STEP as u64).min(leasable) } else { leasable };
            let lease = governor.lease(LeaseRequest::bytes("sql", start).heavy()).await?;
            let pool = lease.into_pool(PoolOptions {
                step: Some("sql".into()),
                unspillable_reserve: settings.unspillable_reserve,
                pressure_aware: true,
                grow_to: interactive.then_some(leasable),
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
    let new_context = || -> Result<SessionContext> {
        Ok(match (&lease_pool, &stock_pool) {
            (Some(pool), _) => session::context(pool.clone(), &options)?,
            (None, Some(pool)) => session::stock_context(pool.clone(), &options)?,
            (None, None) => unreachable!("one pool is set"),
        })
    };

    let started = Instant::now();
    let mut shell = Shell::new(new_context()?, governor.clone(), lease_pool.clone(), budget);
    shell.format = args.format;
    shell.max_rows = args.max_rows;
    let gov = governor.clone();
    shell.set_progress(Box::new(move || spinner(&gov)));
    for arg in &args.tables {
        let (name, path) = tables::parse_table_arg(arg)?;
        tables::register(shell.context(), &name, &path).await?;
    }
    for dir in &args.data {
        tables::register_data_dir(shell.context(), dir).await?;
    }
    let mut opened = None;
    if let Some(dir) = &args.project {
        let project = Project::from_config(dir, config)?;
        let generator = std::env::current_exe().map(Generator::Command).unwrap_or_default();
        let o = project::open(&mut shell, &project, new_context()?, settings.cores.count, &generator).await?;
        for s in &o.skipped {
            eprintln!("note: {s}");
        }
        opened = Some(o);
    }

    let (origin, text) = match input {
        Input::Terminal => {
            let history = args.history.clone().or_else(default_history);
            let mut banner = format!(
                "spillway {} · budget {} · {} cores · spill to {}",
                env!("CARGO_PKG_VERSION"),
                fmt_bytes(budget),
                settings.cores.count,
                settings.spill_dir.display()
            );
            if let Some(o) = &opened {
                banner.push_str(&format!("\n{}", o.summary()));
            }
            interactive::run(&mut shell, history.as_deref(), &banner).await?;
            return Ok(());
        }
        Input::Argument(sql) => ("<argument>".to_string(), sql),
        Input::Stdin => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading SQL from standard input")?;
            ("<stdin>".to_string(), text)
        }
        Input::File(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        }
    };
    let target = match &args.output {
        _ if args.checksum => Target::Checksum,
        Some(path) => Target::File(path),
        None => Target::Print,
    };
    let mut stdout = std::io::stdout().lock();
    let last = shell.run_script(&origin, &text, target, &mut stdout).await?;
    let Some(last) = last else {
        if script::split(&text).is_empty() {
            anyhow::bail!("{origin}: no SQL statement was given");
        }
        return Ok(());
    };
    governor.sample_now();
    if let Some(path) = &args.stats_json {
        let stats = Stats {
            rows: last.rows,
            elapsed_ms: started.elapsed().as_millis() as u64,
            pool: match args.pool {
                PoolKind::Spillway => "spillway",
                PoolKind::Greedy => "greedy",
                PoolKind::Fair => "fair",
                PoolKind::Unbounded => "unbounded",
            },
            budget_bytes: budget,
            lease_bytes: lease_pool.as_ref().map_or(budget, |p| p.lease_bytes()),
            peak_resident_bytes: governor.timeline().peak_anon(),
            peak_jemalloc_resident_bytes: governor.timeline().peak_resident(),
            peak_rss_bytes: governor.timeline().peak_rss(),
            spilled_bytes: last.spilled,
            pool_stats: lease_pool.as_ref().map(|p| p.stats()),
            output_bytes: last.output_bytes,
            checksum: last.checksum,
            joins: last.joins,
        };
        let text = serde_json::to_string_pretty(&stats)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    drop(shell);
    drop(lease_pool);
    drop(temp);
    Ok(())
}

/// Where the statements come from.
enum Input {
    Argument(String),
    File(PathBuf),
    Stdin,
    /// The interactive shell.
    Terminal,
}

impl Input {
    fn of(args: &SqlArgs) -> Result<Input> {
        Ok(match (&args.sql, &args.file) {
            (Some(sql), _) if sql == "-" => Input::Stdin,
            (Some(sql), _) => Input::Argument(sql.clone()),
            (None, Some(f)) if f.as_os_str() == "-" => Input::Stdin,
            (None, Some(f)) => Input::File(f.clone()),
            (None, None) if std::io::stdin().is_terminal() => Input::Terminal,
            (None, None) => Input::Stdin,
        })
    }
}

/// `~/.spillway_history`, as DuckDB keeps `~/.duckdb_history`.
fn default_history() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".spillway_history"))
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
