//! What a run leaves behind in `<project>/.spillway/runs/<run_id>/`:
//!
//! ```text
//!   events.jsonl      one JSON object per event, written as it happens
//!   run_results.json  per model: status, timings, lease, peak memory, spilled bytes, tier, rows
//!   timeline.json     the governor's memory samples (for `spillway report`)
//!   manifest.json     what finished, with fingerprints: what `run --resume` reuses (crate::manifest)
//!   report.html       written by `spillway report`
//!   ../latest         symlink to the newest run
//! ```

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use spillway_engine::query::JoinReport;
use spillway_governor::Sample;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How a model ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Completed.
    Ok,
    /// Failed (see `error`).
    Error,
    /// Not run: an upstream model failed, or the run stopped.
    Skipped,
}

/// A sink's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkResult {
    /// Sink name.
    pub name: String,
    /// Published file; for a postgres sink `user@host:port/db schema.table` (no password).
    pub path: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// File size; for a postgres sink the bytes of COPY data sent.
    pub bytes: u64,
    /// Time spent writing (for a postgres sink: connecting to commit).
    #[serde(default)]
    pub elapsed_ms: u64,
    /// postgres: WAL the server wrote during the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_bytes: Option<u64>,
    /// Why an optional sink was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// One model's record in `run_results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Model name.
    pub name: String,
    /// ok, error or skipped.
    pub status: Status,
    /// Where its output was handed off (`memory`, `ipc`, `parquet`), `sink` when it streamed
    /// straight into its sink, `check` for a check; `null` if it did not complete.
    pub tier: Option<String>,
    /// Why that tier.
    pub tier_reason: Option<String>,
    /// `heavy` or `light`.
    pub class: String,
    /// Bytes of the lease of the last attempt.
    pub lease_bytes: u64,
    /// Attempts made (retries after `ResourcesExhausted` escalate).
    pub attempts: u32,
    /// Partitions of the last attempt.
    pub partitions: usize,
    /// Highest anonymous resident memory of the process while the model ran.
    pub peak_resident_bytes: u64,
    /// Highest RSS of the process while the model ran.
    pub peak_rss_bytes: u64,
    /// Bytes the model's operators spilled.
    pub spilled_bytes: u64,
    /// Rows of output.
    pub rows: u64,
    /// Bytes of output (in memory or on disk).
    pub bytes: u64,
    /// From the first lease request to the end, milliseconds.
    pub elapsed_ms: u64,
    /// Start, milliseconds since the run started.
    pub started_ms: u64,
    /// When the lease was granted (after waiting), milliseconds since the run started.
    pub leased_ms: u64,
    /// End, milliseconds since the run started.
    pub finished_ms: u64,
    /// What went wrong, for `error` and `skipped`.
    pub error: Option<String>,
    /// Files published from this model.
    pub sinks: Vec<SinkResult>,
    /// Each hash join of the last attempt: whether it went out of core, buckets, depth, bytes
    /// spilled.
    #[serde(default)]
    pub joins: Vec<JoinReport>,
    /// Its output, kept beyond the run for resuming (`checkpoint = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<PathBuf>,
    /// The run it was reused from (`--resume`), instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Its child process, when it ran isolated (`isolate`): the last attempt's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<Isolated>,
    /// The Ballista job it ran as, when it ran on the cluster (`engine = "ballista"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<OnCluster>,
}

/// A model run on a Ballista cluster, as `run_results.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnCluster {
    /// The scheduler (`df://host:port`).
    pub url: String,
    /// Ballista's job id, its queue and execution times on the cluster, the time until the last
    /// row arrived here, and the bytes fetched (the last attempt's).
    #[serde(flatten)]
    pub job: spillway_cluster::JobInfo,
    /// Inputs written to Parquet for the executors (memory or IPC hand-offs, PostgreSQL
    /// sources), with their bytes.
    #[serde(default)]
    pub staged: Vec<(String, u64)>,
}

/// An isolated model's child process, as `run_results.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Isolated {
    /// The child's pid.
    pub pid: u32,
    /// `cgroup v1`, `cgroup v2` or `rlimit`.
    pub confinement: String,
    /// Its memory limit: the lease plus the stated headroom.
    pub limit_bytes: u64,
    /// The most memory its cgroup held (cgroups only).
    pub peak_bytes: Option<u64>,
    /// Whether the kernel's OOM killer killed it (at any attempt).
    pub oom_killed: bool,
    /// Spawn to exit of the child, milliseconds.
    pub child_ms: u64,
}

impl StepResult {
    /// A model that did not run.
    pub fn skipped(name: &str, class: String, why: String, at_ms: u64) -> Self {
        Self {
            name: name.into(),
            status: Status::Skipped,
            tier: None,
            tier_reason: None,
            class,
            lease_bytes: 0,
            attempts: 0,
            partitions: 0,
            peak_resident_bytes: 0,
            peak_rss_bytes: 0,
            spilled_bytes: 0,
            rows: 0,
            bytes: 0,
            elapsed_ms: 0,
            started_ms: at_ms,
            leased_ms: at_ms,
            finished_ms: at_ms,
            error: Some(why),
            sinks: vec![],
            joins: vec![],
            kept: None,
            reused_from: None,
            isolated: None,
            cluster: None,
        }
    }
}

/// `run_results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// The run's id (its folder name).
    pub run_id: String,
    /// The project folder.
    pub project: PathBuf,
    /// Start time, UTC (RFC 3339).
    pub started_at: String,
    /// `ok` when every selected model completed, else `error`.
    pub status: Status,
    /// The memory budget.
    pub budget_bytes: u64,
    /// The part of the budget that may be lent (budget less headroom).
    pub leasable_bytes: u64,
    /// Cores used.
    pub cores: usize,
    /// Highest anonymous resident memory of the run (what the budget governs).
    pub peak_resident_bytes: u64,
    /// Highest process RSS of the run (includes the binary's code pages).
    pub peak_rss_bytes: u64,
    /// Bytes spilled by all models' operators.
    pub spilled_bytes: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
    /// When the sources were ready (after generating data, if any), milliseconds since the start.
    #[serde(default)]
    pub sources_ready_ms: u64,
    /// Per model, in run order.
    pub steps: Vec<StepResult>,
}

impl RunResults {
    /// Reads `run_results.json` from a run folder.
    pub fn read(run_dir: &Path) -> Result<RunResults> {
        let path = run_dir.join("run_results.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::at(&path, e.line(), e.to_string()))
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// What happens during a run, as it happens (also written to `events.jsonl`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began.
    RunStarted {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Run id.
        run_id: String,
        /// Selected models in run order.
        models: Vec<String>,
        /// Budget.
        budget_bytes: u64,
    },
    /// A source's data is being generated (not logged; for progress bars).
    #[serde(skip)]
    SourceProgress {
        /// Source name.
        source: String,
        /// Rows so far.
        rows: u64,
        /// Rows expected.
        total: u64,
    },
    /// Sources are ready.
    SourcesReady {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Table → location.
        tables: Vec<String>,
    },
    /// A model asks for its lease.
    ModelQueued {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Model.
        model: String,
        /// Bytes asked.
        lease_bytes: u64,
        /// Heavy slot needed.
        heavy: bool,
    },
    /// A model got its lease and runs.
    ModelStarted {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Model.
        model: String,
        /// 1 for the first attempt.
        attempt: u32,
        /// Bytes lent.
        lease_bytes: u64,
        /// Partitions.
        partitions: usize,
    },
    /// An isolated model's child process started.
    ModelIsolated {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Model.
        model: String,
        /// The child's pid.
        pid: u32,
        /// `cgroup v1`, `cgroup v2` or `rlimit`.
        confinement: String,
        /// Its memory limit.
        limit_bytes: u64,
    },
    /// A model's query was sent to the Ballista cluster.
    ModelOnCluster {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Model.
        model: String,
        /// The scheduler.
        url: String,
    },
    /// A model failed for lack of memory and is tried again with more, or on disk.
    ModelRetry {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Model.
        model: String,
        /// The attempt that comes next.
        attempt: u32,
        /// What failed.
        error: String,
        /// What changes.
        escalation: String,
    },
    /// A model ended (ok, error or skipped).
    ModelFinished {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// Its record.
        #[serde(flatten)]
        step: Box<StepResult>,
    },
    /// The run ended.
    RunFinished {
        /// Milliseconds since the run started.
        t_ms: u64,
        /// ok or error.
        status: Status,
        /// Models completed.
        ok: usize,
        /// Models failed.
        errors: usize,
        /// Models skipped.
        skipped: usize,
    },
}

/// A run's folder under `<project>/.spillway/runs/`.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    events: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl RunFolder {
    /// Creates `<project>/.spillway/runs/<run_id>/` and its event log.
    pub fn create(project_dir: &Path, run_id: &str) -> Result<RunFolder> {
        let dir = runs_dir(project_dir).join(run_id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join("events.jsonl");
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(RunFolder { dir, events: Mutex::new(std::io::BufWriter::new(file)) })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Appends `event` to `events.jsonl` (progress events are not logged).
    pub fn log(&self, event: &Event) {
        if matches!(event, Event::SourceProgress { .. }) {
            return;
        }
        let Ok(line) = serde_json::to_string(event) else { return };
        let mut w = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if writeln!(w, "{line}").and_then(|_| w.flush()).is_err() {
            tracing::warn!(dir = %self.dir.display(), "could not write events.jsonl");
        }
    }

    /// Writes `run_results.json` and `timeline.json`, then points `runs/latest` here.
    pub fn finish(&self, results: &RunResults, timeline: &[Sample]) -> Result<()> {
        write_json(&self.dir.join("run_results.json"), results)?;
        write_json(&self.dir.join("timeline.json"), &thin(timeline, 4000))?;
        let runs = self.dir.parent().expect("a run folder has a parent");
        let latest = runs.join("latest");
        let tmp = spillway_tiers::staging::staging_path(&latest);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&results.run_id, &tmp).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &latest).map_err(|e| Error::io(&latest, e))
    }
}

/// `<project>/.spillway/runs`.
pub fn runs_dir(project_dir: &Path) -> PathBuf {
    project_dir.join(".spillway").join("runs")
}

/// A run's folder from `RUN` as given to `spillway report`: a run id, `latest`, or a path.
pub fn find_run(project_dir: &Path, run: Option<&str>) -> Result<PathBuf> {
    let run = run.unwrap_or("latest");
    let as_path = Path::new(run);
    if as_path.join("run_results.json").is_file() {
        return Ok(as_path.to_path_buf());
    }
    let runs = runs_dir(project_dir);
    let dir = runs.join(run);
    if dir.join("run_results.json").is_file() {
        // `latest` is a symlink to the run's id: name the run itself.
        return Ok(std::fs::read_link(&dir).map(|target| runs.join(target)).unwrap_or(dir));
    }
    Err(Error::io(
        &dir,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no run_results.json here: run `spillway run` first, or name a run",
        ),
    ))
}

/// Reads `timeline.json` from a run folder (empty when missing).
pub fn read_timeline(run_dir: &Path) -> Vec<Sample> {
    std::fs::read_to_string(run_dir.join("timeline.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::at(path, 1, e.to_string()))?;
    Ok(spillway_tiers::durable::replace_synced(path, &text)?)
}

/// At most about `max` samples, keeping each dropped stretch's highest resident sample so peaks
/// survive.
fn thin(samples: &[Sample], max: usize) -> Vec<Sample> {
    if samples.len() <= max {
        return samples.to_vec();
    }
    let step = samples.len().div_ceil(max);
    samples.chunks(step).filter_map(|c| c.iter().max_by_key(|s| s.rss_anon).copied()).collect()
}

/// A run id from the current UTC time and the process id: `20261122-031502-4711`.
pub fn new_run_id() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, mo, d, h, mi, s) = spillway_project::clock::civil(secs);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{}", std::process::id())
}
