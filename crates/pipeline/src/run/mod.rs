//! Running a project's DAG under the governor.
//!
//! ```text
//!   validate (plan every model, all problems at once) ─▶ sources ready (tpch generated once)
//!        ▼
//!   scheduler: a model is ready when its upstream models are done; up to `jobs` at once;
//!              heavy models wait for the heavy slot (light ones go past them meanwhile)
//!        ▼ per model
//!   lease (FIFO; waits when memory is short) ─▶ LeasePool ─▶ DataFusion session
//!   inputs: upstream outputs registered without copying (tiers::read), sources by location
//!   output: hand-off store (memory / IPC / Parquet by size), or straight into its one sink,
//!           sinks published atomically; a check must return no rows
//!   ResourcesExhausted ─▶ retry: a larger lease if the budget allows, else disk hand-off and
//!                         half the partitions (hash joins go out of core on their own: spillway-operators)
//!   isolate ─▶ the same, in a child process under a memory cgroup (isolated.rs); an OOM kill
//!              is retried once disk-first
//!   engine = "ballista" ─▶ the query on the Ballista cluster, inputs as Parquet files, the rows
//!              placed here (cluster.rs); the cluster is checked before any work starts
//!   failure ─▶ descendants skipped, independent models go on (`fail_fast` stops everything)
//! ```
//!
//! An output is freed (memory back to the governor, file deleted) as soon as the last model that
//! reads it is done.

use crate::check;
use crate::error::{Error, Result};
use crate::manifest::{self, FileStamp, Fingerprint, Manifest, ManifestWriter, ModelRecord, SinkRecord};
use crate::results::{self, Event, RunFolder, RunResults, Status, StepResult};
use crate::resume::{self, Decision};
use spillway_governor::Governor;
use spillway_project::dag::Dag;
use spillway_project::sources::{self, SourceTables};
use spillway_project::LeaseSpec;
use spillway_project::Project;
use spillway_tiers::{HandoffStore, Materialize, QuotaTempFiles, TempSpace, TierConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::Notify;

mod attempt;
mod cluster;
mod isolated;
mod publish;
mod schedule;
mod stage;

pub use cluster::wanted as on_cluster;
pub use isolated::wanted as isolates;

/// Called with every event as it happens (progress displays).
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// dbt-style selection (`model`, `+model`, `model+`); `None` runs everything.
    pub select: Option<String>,
    /// Stop everything at the first failure.
    pub fail_fast: bool,
    /// Models running at once (default: the core count).
    pub jobs: usize,
    /// Cores: partitions of heavy models (light ones get half).
    pub cores: usize,
    /// Root of temp space (hand-offs and operator spills).
    pub spill_dir: PathBuf,
    /// Temp-space quota (default 80% of free space).
    pub max_spill: Option<u64>,
    /// Share of each lease kept for consumers that cannot spill.
    pub unspillable_reserve: f64,
    /// Forces every hand-off to one tier (for comparisons); `None` keeps each model's setting.
    pub materialize: Option<Materialize>,
    /// How `tpch` sources are generated when not cached yet.
    pub generator: sources::Generator,
    /// Notified to stop the run (e.g. on Ctrl-C): running models are cancelled, the rest skipped.
    pub cancel: Option<Arc<Notify>>,
    /// Reuse what the last run finished (`spillway run --resume`, `spillway retry`).
    pub resume: bool,
    /// The spillway binary isolated models run in (`spillway worker`); `None`: isolation
    /// cannot be used (a model asking for it fails saying so).
    pub worker: Option<PathBuf>,
}

impl RunOptions {
    /// Defaults for `cores` cores with temp space under `spill_dir`.
    pub fn new(cores: usize, spill_dir: impl Into<PathBuf>) -> Self {
        Self {
            select: None,
            fail_fast: false,
            jobs: cores.max(1),
            cores: cores.max(1),
            spill_dir: spill_dir.into(),
            max_spill: None,
            unspillable_reserve: spillway_governor::DEFAULT_UNSPILLABLE_RESERVE,
            materialize: None,
            generator: sources::Generator::InProcess,
            cancel: None,
            resume: false,
            worker: None,
        }
    }
}

/// Everything the model tasks share.
struct Shared {
    project: Project,
    dag: Dag,
    governor: Governor,
    store: HandoffStore,
    temp_files: Arc<QuotaTempFiles>,
    /// The temp-space quota (isolated models' children get what is left of it).
    temp_quota: Arc<spillway_tiers::DiskQuota>,
    /// Where isolated models' children get their folders (inside this process's run folder).
    worker_dir: PathBuf,
    sources: SourceTables,
    /// Unselected upstream models read from their published sink files.
    external: BTreeMap<String, String>,
    /// Selected models reading each model.
    consumers: BTreeMap<String, usize>,
    /// Every model's fingerprint (recorded in the manifest).
    fingerprints: BTreeMap<String, Fingerprint>,
    /// This run's manifest, updated as models finish.
    manifest: ManifestWriter,
    options: RunOptions,
    heavy_running: AtomicUsize,
    /// Models holding their lease right now (what cancelling at critical pressure can free).
    holding: std::sync::Mutex<BTreeSet<String>>,
    t0: u64,
    folder: RunFolder,
    observer: Observer,
}

impl Shared {
    fn now(&self) -> u64 {
        self.governor.timeline().now_ms().saturating_sub(self.t0)
    }
    fn emit(&self, event: Event) {
        self.folder.log(&event);
        (self.observer)(&event);
    }
    fn lease_bytes(&self, spec: LeaseSpec) -> u64 {
        let g = self.governor.config();
        spec.bytes(g).min(g.leasable())
    }
    /// Records a finished model in the manifest (durably). Failing to write it fails nothing
    /// else: the run goes on, a resume then runs the model again.
    fn record(&self, step: &StepResult) {
        let Some(fingerprint) = self.fingerprints.get(&step.name).cloned() else { return };
        let sinks = step
            .sinks
            .iter()
            .filter(|s| s.skipped.is_none())
            .map(|s| {
                let is_file = self.project.sinks.get(&s.name).is_some_and(|d| d.file().is_some());
                SinkRecord {
                    name: s.name.clone(),
                    file: is_file.then(|| FileStamp::of(&s.path)).flatten(),
                    postgres: (!is_file).then(|| s.path.to_string_lossy().into_owned()),
                }
            })
            .collect();
        let record = ModelRecord {
            fingerprint,
            status: step.status,
            tier: step.tier.clone(),
            rows: step.rows,
            kept: step.kept.as_deref().and_then(FileStamp::of),
            sinks,
            reused_from: None,
        };
        spillway_faults::point("model-done");
        match self.manifest.record(&step.name, record) {
            Ok(()) => spillway_faults::point("manifest-written"),
            Err(e) => tracing::warn!(model = %step.name, error = %e, "could not record the model in the run manifest"),
        }
    }
}

/// Validates `project`, then runs the selected models under `governor` (with
/// [`RunOptions::resume`], only those the last run did not finish; see [`crate::resume`]).
/// Returns the results (also written to the run's folder) whether or not models failed; `Err`
/// only for problems found before any work started, or when the run's folder or temp space
/// cannot be set up.
pub async fn run(
    project: &Project,
    governor: &Governor,
    options: RunOptions,
    observer: Observer,
) -> Result<RunResults> {
    let check::Validated { dag, selected, postgres } =
        check::validate_and_open(project, options.select.as_deref()).await?;
    let mut external = external_inputs(project, &dag, &selected)?;
    let fingerprints = manifest::fingerprints_now(project, &dag, &postgres);
    // Resuming: what the last run finished is reused, not run.
    let mut reused: BTreeMap<String, ModelRecord> = BTreeMap::new();
    if options.resume {
        let previous = Manifest::latest(&project.dir);
        for (name, decision) in resume::decide(project, &dag, &selected, &fingerprints, previous.as_ref()) {
            match decision {
                Decision::Reuse { record, input } => {
                    if let Some(path) = input {
                        external.insert(name.clone(), path.to_string_lossy().into_owned());
                    }
                    reused.insert(name, *record);
                }
                Decision::Rerun(why) => tracing::info!(model = %name, %why, "runs again"),
            }
        }
    }
    let to_run: Vec<String> = selected.iter().filter(|m| !reused.contains_key(*m)).cloned().collect();
    let chosen: BTreeSet<&String> = to_run.iter().collect();
    // A cluster that is down fails the run here, before any work starts.
    if let Some(url) = project.cluster.as_ref().filter(|_| to_run.iter().any(|m| cluster::wanted(&project.models[m]))) {
        spillway_cluster::check(url).await?;
    }

    let run_id = results::new_run_id();
    let started_at = spillway_project::clock::now_rfc3339();
    let folder = RunFolder::create(&project.dir, &run_id)?;
    let manifest = ManifestWriter::create(
        folder.path(),
        Manifest { run_id: run_id.clone(), select: options.select.clone(), finished: false, models: reused.clone() },
    )?;
    sweep_staging(project);
    spillway_faults::point("run-started");
    let temp = TempSpace::open(&options.spill_dir, options.max_spill)?;
    let store = HandoffStore::new(
        governor.clone(),
        temp.handoff_dir()?,
        temp.quota().clone(),
        TierConfig::for_budget(governor.budget()),
    );
    let consumers =
        to_run.iter().map(|m| (m.clone(), dag.downstream[m].iter().filter(|d| chosen.contains(d)).count())).collect();
    let t0 = governor.timeline().now_ms();
    let mut shared = Shared {
        project: project.clone(),
        dag: dag.clone(),
        governor: governor.clone(),
        store,
        temp_files: temp.temp_files().clone(),
        temp_quota: temp.quota().clone(),
        worker_dir: temp.run_dir().join("workers"),
        sources: SourceTables::default(),
        external,
        consumers,
        fingerprints,
        manifest,
        options: options.clone(),
        heavy_running: AtomicUsize::new(0),
        holding: Default::default(),
        t0,
        folder,
        observer,
    };
    shared.emit(Event::RunStarted {
        t_ms: 0,
        run_id: run_id.clone(),
        models: selected.clone(),
        budget_bytes: governor.budget(),
    });

    // Sources (generating TPC-H data the first time) on a blocking thread.
    let needed: Vec<String> =
        to_run.iter().flat_map(|m| dag.sources[m].iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let (p, obs, threads, generator) =
        (project.clone(), shared.observer.clone(), options.cores, options.generator.clone());
    shared.sources = tokio::task::spawn_blocking(move || {
        sources::prepare(&p, &needed, threads, &generator, &|source, rows, total| {
            obs(&Event::SourceProgress { source: source.to_string(), rows, total })
        })
    })
    .await
    .map_err(|e| Error::Usage(format!("preparing sources failed: {e}")))??;
    shared.sources.postgres = postgres;
    // Generating data leaves freed pages in the generator threads' arenas: give them back now so
    // the models start from a clean baseline.
    spillway_governor::jemalloc::purge_all_arenas();
    let sources_ready_ms = shared.now();
    shared.emit(Event::SourcesReady {
        t_ms: sources_ready_ms,
        tables: shared
            .sources
            .locations
            .iter()
            .map(|(t, l)| format!("{t}={l}"))
            .chain(shared.sources.postgres.keys().map(|t| format!("{t}=postgres")))
            .collect(),
    });

    spillway_faults::point("sources-ready");
    let shared = Arc::new(shared);
    let mut ran = schedule::schedule(&shared, &to_run).await;
    // In run order, reused models included.
    let steps: Vec<StepResult> = selected
        .iter()
        .filter_map(|m| match reused.get(m) {
            Some(record) => Some(reused_step(&shared, m, record)),
            None => ran.iter().position(|s| &s.name == m).map(|i| ran.swap_remove(i)),
        })
        .collect();
    governor.sample_now();
    let elapsed_ms = shared.now();
    let ok = steps.iter().filter(|s| s.status == Status::Ok).count();
    let errors = steps.iter().filter(|s| s.status == Status::Error).count();
    let results = RunResults {
        run_id,
        project: project.dir.clone(),
        started_at,
        status: if ok == steps.len() { Status::Ok } else { Status::Error },
        budget_bytes: governor.budget(),
        leasable_bytes: governor.leasable(),
        cores: options.cores,
        peak_resident_bytes: governor.timeline().peak_between(t0, u64::MAX).0,
        peak_rss_bytes: governor.timeline().peak_between(t0, u64::MAX).1,
        spilled_bytes: steps.iter().map(|s| s.spilled_bytes).sum(),
        elapsed_ms,
        sources_ready_ms,
        steps,
    };
    shared.emit(Event::RunFinished {
        t_ms: elapsed_ms,
        status: results.status,
        ok,
        errors,
        skipped: results.steps.len() - ok - errors,
    });
    let samples: Vec<_> = governor
        .timeline()
        .samples()
        .into_iter()
        .filter(|s| s.t_ms >= t0)
        .map(|mut s| {
            s.t_ms -= t0;
            s
        })
        .collect();
    spillway_faults::point("run-finishing");
    shared.folder.finish(&results, &samples)?;
    shared.manifest.finish()?;
    drop(shared);
    drop(temp);
    Ok(results)
}

/// Upstream models left out of the selection are read from their published sink files.
fn external_inputs(project: &Project, dag: &Dag, selected: &[String]) -> Result<BTreeMap<String, String>> {
    let chosen: BTreeSet<&String> = selected.iter().collect();
    let mut external = BTreeMap::new();
    let mut problems = Vec::new();
    for m in selected {
        for up in dag.upstream[m].iter().filter(|u| !chosen.contains(u)) {
            let published = project
                .sinks
                .values()
                .filter(|s| &s.model == up)
                .filter_map(|s| s.file())
                .map(|p| project.dir.join(p))
                .find(|p| p.is_file());
            match published {
                Some(p) => {
                    external.insert(up.clone(), p.to_string_lossy().into_owned());
                }
                None => problems.push(Error::at(
                    &project.models[m].path,
                    1,
                    format!("{m} reads {up}, which is not selected and has no published sink file: select +{m}"),
                )),
            }
        }
    }
    match Error::many(problems) {
        Some(e) => Err(e),
        None => Ok(external),
    }
}

/// Removes the staging files dead processes left where this project publishes: beside its file
/// sinks, in `.spillway/state/`, and in `.spillway/runs/` and each run's folder (manifests and
/// results are replaced through staging files too).
fn sweep_staging(project: &Project) {
    let mut dirs: BTreeSet<PathBuf> = project
        .sinks
        .iter()
        .filter_map(|(n, d)| match d.target(n, &project.dir) {
            Ok(spillway_project::SinkTarget::File(p)) => p.parent().map(|d| d.to_path_buf()),
            _ => None,
        })
        .collect();
    dirs.insert(project.dir.join(".spillway").join("state"));
    let runs = results::runs_dir(&project.dir);
    if let Ok(rd) = std::fs::read_dir(&runs) {
        dirs.extend(rd.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    dirs.insert(runs);
    for dir in dirs {
        spillway_tiers::staging::sweep(&dir);
    }
}

/// The step result of a model reused from an earlier run.
fn reused_step(sh: &Shared, name: &str, record: &ModelRecord) -> StepResult {
    let class = sh.project.models.get(name).map_or("light".into(), |m| m.settings.class.to_string());
    let mut step = StepResult::skipped(name, class, String::new(), 0);
    let from = record.reused_from.clone().unwrap_or_default();
    step.status = Status::Ok;
    step.error = None;
    step.tier = record.tier.clone();
    step.rows = record.rows;
    step.tier_reason = Some(format!("reused from run {from}"));
    step.reused_from = Some(from);
    step.kept = record.kept.as_ref().map(|k| k.path.clone());
    sh.emit(Event::ModelFinished { t_ms: sh.now(), step: Box::new(step.clone()) });
    step
}
