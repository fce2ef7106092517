//! Command-line arguments (clap derive). Validation beyond syntax happens in `settings`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// spillway: run data work on one machine under one memory budget, never out of memory.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Lets `spillway sql "$(cat q.sql)"` work when the file starts with a `--` comment: an argument
/// of `sql` that starts with `--` but cannot be a flag (it spans lines, or a space follows the
/// dashes) is SQL, so it gets a leading space, which clap takes as a value and SQL ignores.
pub fn sql_text_as_value(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut seen_sql = false;
    args.map(|a| {
        let Some(text) = a.to_str() else { return a };
        if !seen_sql {
            seen_sql = text == "sql";
            return a;
        }
        let sql_like =
            text.strip_prefix("--").is_some_and(|rest| text.contains('\n') || rest.starts_with(char::is_whitespace));
        if sql_like {
            format!(" {text}").into()
        } else {
            a
        }
    })
    .collect()
}

/// Settings every command understands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Memory budget: a size (4GiB, 512MiB) or a share of the effective limit (60%).
    /// Also SPILLWAY_MEMORY or `memory` in the config file. Default 60%.
    #[arg(long, global = true, env = "SPILLWAY_MEMORY", value_name = "SIZE|PCT")]
    pub memory: Option<String>,
    /// Root directory for spill files (default ~/.cache/spillway/spill).
    #[arg(long, global = true, env = "SPILLWAY_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most disk space temp files (hand-offs and operator spills) may take (default 80% of free space).
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_spill: Option<String>,
    /// Config file (default ./spillway.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The machine budget every spillway process on this machine leases from together, through
    /// the ledger: a size or a share of the effective limit. Default 60%.
    #[arg(long, global = true, env = "SPILLWAY_MACHINE_MEMORY", value_name = "SIZE|PCT")]
    pub machine_memory: Option<String>,
    /// The machine-wide ledger file, or `off` for this process's own budget only
    /// (default /dev/shm/spillway-ledger).
    #[arg(long, global = true, env = "SPILLWAY_LEDGER", value_name = "FILE|off")]
    pub ledger: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what was detected: memory limit and its source, budget, cores, spill dir, allocator.
    Info,
    /// Run SQL under the budget over files registered as tables, streaming the result.
    Sql(SqlArgs),
    /// Validate a project (spillway.toml + models/*.sql) and print its plan: dependencies,
    /// leases, classes and run order.
    Plan(PlanArgs),
    /// Run a project's models as a DAG under the budget: heavy models one at a time, light ones
    /// side by side, outputs handed off by size, sinks published atomically.
    Run(RunArgs),
    /// Run again what the last run did not finish (failed, skipped, interrupted or killed),
    /// reusing every model it finished whose inputs are unchanged: `run --resume` with the last
    /// run's selection (as `dbt retry`).
    Retry(RunArgs),
    /// Render a run's HTML report (memory timeline, models) from .spillway/runs/.
    Report(ReportArgs),
    /// Create a working example project in DIR.
    Init(InitArgs),
    /// Incremental views (views/*.sql): kept exactly up to date from the change files of their
    /// sources.
    #[command(subcommand)]
    Views(ViewsCommand),
    /// Generate benchmark data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Benchmarks against other engines under the same memory limit.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// An isolated model's child process (started by `spillway run`; its spec on stdin).
    #[command(hide = true)]
    Worker,
    /// An Apache Ballista cluster for models with `engine = "ballista"`.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a Ballista scheduler and N executors on this machine, each executor bounded by its
    /// share of the budget (--memory); print the URL; Ctrl-C stops them.
    Up(ClusterUpArgs),
    /// One Ballista executor, its pool a lease of its --memory (started by `cluster up`; on
    /// another machine, start it by hand with --scheduler).
    #[command(hide = true)]
    Executor(ClusterExecutorArgs),
}

#[derive(Debug, Args)]
pub struct ClusterUpArgs {
    /// How many executors (each gets an equal share of --memory).
    #[arg(long, default_value_t = 2)]
    pub executors: usize,
    /// The scheduler's port (0 picks a free one).
    #[arg(long, default_value_t = 50050)]
    pub port: u16,
    /// The address the scheduler and executors bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Tasks at once per executor (default: the cores divided among the executors, at least 1).
    #[arg(long)]
    pub vcores: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ClusterExecutorArgs {
    /// The scheduler to register with (df://host:port).
    #[arg(long)]
    pub scheduler: String,
    /// Its name in the scheduler.
    #[arg(long, default_value = "executor-1")]
    pub id: String,
    /// The address it binds and advertises.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Its Arrow Flight port.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Its gRPC port.
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks at once.
    #[arg(long, default_value_t = 1)]
    pub vcores: usize,
    /// Shuffle files and spills.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// The machine-wide ledger's capacity as `cluster up` resolved it (in its cgroup, an
    /// executor would take its own limit for the machine's).
    #[arg(long, hide = true)]
    pub ledger_capacity: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ViewsCommand {
    /// Populate the views on first use, then apply every change file not yet applied, in name
    /// order, each as one transaction across all views; publish their sinks after each.
    Apply(ViewsApplyArgs),
    /// Show each view's operator graph with the state each operator holds.
    Explain(ViewsExplainArgs),
    /// Per view: rows, state bytes, the last change applied (from .spillway/views/status.json).
    Status(ViewsArgs),
    /// Keep the views up to date in one long-lived process: apply change files as they arrive
    /// (a folder watch, with a poll fallback), serve /status (JSON) and /metrics (Prometheus);
    /// SIGINT or SIGTERM stops it between transactions.
    Serve(ViewsServeArgs),
}

#[derive(Debug, Args)]
pub struct ViewsServeArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Override a setting of spillway.toml, e.g. `--set sources.tpch.sf=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Address of the HTTP endpoint (/status, /metrics); port 0 picks a free one. The address
    /// taken is printed and written to .spillway/views/serve.json.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477")]
    pub listen: std::net::SocketAddr,
    /// How often to look for change files when no folder event arrives, e.g. `500ms`, `2s`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub poll: std::time::Duration,
}

/// `250ms`, `2s`, `1m`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len()));
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 1m"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?}: a duration must be above zero"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[derive(Debug, Args)]
pub struct ViewsArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Override a setting of spillway.toml, e.g. `--set sources.tpch.sf=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ViewsApplyArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Override a setting of spillway.toml, e.g. `--set sources.tpch.sf=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Also write what was applied (per file: rows, time, time in each view) as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ViewsExplainArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Only this view.
    pub view: Option<String>,
    /// Override a setting of spillway.toml (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The 22 TPC-H queries, each in a fresh process, per engine: status, wall time, peak RSS
    /// (from the kernel), spilled bytes, result checksum.
    Tpch(BenchTpchArgs),
}

#[derive(Debug, Args)]
pub struct BenchTpchArgs {
    /// Scale factor; data is generated once into ~/.cache/spillway/tpch-sf<N> (or --data).
    #[arg(long, default_value_t = 1.0)]
    pub sf: f64,
    /// Queries to run, e.g. 1,5,18 (default all 22).
    #[arg(long, value_delimiter = ',')]
    pub queries: Vec<usize>,
    /// Engines, interleaved per query: spillway (the governor) and datafusion (DataFusion's
    /// GreedyMemoryPool of the same size, as `datafusion-cli --memory-limit`).
    #[arg(long = "engine", value_enum, value_delimiter = ',', default_value = "spillway,datafusion")]
    pub engines: Vec<BenchEngine>,
    /// Write the rows as JSON: [{"query", "engine", "status", "wall_ms", "peak_rss_bytes", "spilled_bytes", "checksum", ...}].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// TPC-H Parquet folder to use (generated there if missing).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Seconds before a query is killed and reported as a timeout.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchEngine {
    /// spillway's governor and lease pool.
    Spillway,
    /// DataFusion's stock GreedyMemoryPool of the same size, no governor.
    Datafusion,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Only these models: `model`, `+model` (with ancestors), `model+` (with descendants).
    #[arg(long, short = 's')]
    pub select: Option<String>,
    /// Stop everything at the first failure (default: skip the failed model's descendants and go on).
    #[arg(long)]
    pub fail_fast: bool,
    /// Models running at once (default: the core count).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Force every hand-off to one tier (to compare tiers; sinks are then written from it).
    #[arg(long, value_enum)]
    pub materialize: Option<MaterializeArg>,
    /// Override a setting of spillway.toml, e.g. `--set sources.tpch.sf=10` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Plain lines instead of progress bars, even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Reuse what the last run finished (same fingerprint: SQL, settings, upstream, sources; kept
    /// output) and run the rest. `spillway plan --resume` shows what would be reused and why not.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MaterializeArg {
    /// Arrow batches in memory (still moves to IPC rather than exceed the budget).
    Memory,
    /// Arrow IPC files.
    Ipc,
    /// Parquet files (zstd).
    Parquet,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The run: an id under .spillway/runs/, `latest`, or a run folder.
    #[arg(long, short = 'r', default_value = "latest")]
    pub run: String,
    /// Where to write the HTML (default: report.html in the run's folder).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to create (must not hold a spillway.toml yet).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Only these models: `model`, `+model` (with ancestors), `model+` (with descendants).
    #[arg(long, short = 's')]
    pub select: Option<String>,
    /// Override a setting of spillway.toml, e.g. `--set sources.tpch.sf=10` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Show what `run --resume` would reuse from the last run, and why each other model runs.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL to run: statements separated by `;`, every result printed (the last one's goes to
    /// `--output` or `--checksum`). `-` reads standard input; without SQL, `-f` or piped input, a
    /// terminal gets the interactive shell. SQL that starts with `--` (a comment) works as is.
    pub sql: Option<String>,
    /// Run the statements and shell commands of FILE (`-` for standard input).
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "sql")]
    pub file: Option<PathBuf>,
    /// How results are printed: table, csv, json or ndjson.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: spillway_shell::Format,
    /// Open a project's tables by name: its sources, the outputs its last run kept, its views.
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// The interactive shell's history file.
    #[arg(long, env = "SPILLWAY_HISTORY", value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Register a table: NAME=PATH where PATH is a Parquet/CSV/JSON/Arrow file, a folder or a glob.
    #[arg(long = "table", short = 't', value_name = "NAME=PATH")]
    pub tables: Vec<String>,
    /// Register every table found in a folder (NAME.parquet files or NAME/ folders, as `gen tpch` writes).
    #[arg(long = "data", short = 'd', value_name = "DIR")]
    pub data: Vec<PathBuf>,
    /// Write the full result to a file (.parquet, .csv, .json or .arrow) instead of printing it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Rows a table shows (0: all, printed as they arrive; CSV and JSON print every row).
    #[arg(long, default_value_t = 40)]
    pub max_rows: usize,
    /// Print only the row count and an order-independent checksum of the result (to compare
    /// engines; see `bench/duckdb_tpch.py`).
    #[arg(long, conflicts_with = "output")]
    pub checksum: bool,
    /// Run DataFusion's own hash, cross and nested-loop joins, which cannot spill, instead of
    /// spillway's out-of-core ones (to measure what the grace join costs when everything fits).
    #[arg(long)]
    pub native_joins: bool,
    /// Write run statistics (rows, time, peak memory, spilled bytes) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Memory pool: spillway's governed lease pool, or a stock DataFusion pool of the same size
    /// (for comparisons; these skip the governor).
    #[arg(long, value_enum, default_value_t = PoolKind::Spillway)]
    pub pool: PoolKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolKind {
    /// spillway's lease pool under the governor.
    Spillway,
    /// DataFusion's GreedyMemoryPool of the budget's size (what `datafusion-cli --memory-limit` uses).
    Greedy,
    /// DataFusion's FairSpillPool of the budget's size.
    Fair,
    /// No limit at all (DataFusion's default).
    Unbounded,
}

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// TPC-H tables as Parquet: OUT/<table>/part-N.parquet.
    Tpch(GenTpchArgs),
    /// A TPC-H refresh-style change stream for incremental views (new orders with their
    /// lineitems, old ones deleted, quantities, balances and supply costs updated):
    /// OUT/<table>/<batch>.parquet with the table's columns plus `_op`.
    TpchChanges(GenTpchChangesArgs),
}

#[derive(Debug, Args)]
pub struct GenTpchChangesArgs {
    /// The generated TPC-H data (`gen tpch --out`, or a project's .spillway/data/tpch-sf<N>).
    #[arg(long)]
    pub data: PathBuf,
    /// Orders deleted (and as many inserted) per batch; a batch changes about 12x as many rows.
    #[arg(long, default_value_t = 100)]
    pub orders: usize,
    /// Batches.
    #[arg(long, default_value_t = 10)]
    pub batches: u64,
    /// Output folder (a source's `changes`).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenTpchArgs {
    /// Scale factor (1 = ~1GB of CSV, 6M lineitem rows).
    #[arg(long, default_value_t = 1.0)]
    pub sf: f64,
    /// Output folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}
