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
//!                         half the partitions (hash joins go out of core on their own: spillway-joins)
//!   failure ─▶ descendants skipped, independent models go on (`fail_fast` stops everything)
//! ```
//!
//! An output is freed (memory back to the governor, file deleted) as soon as the last model that
//! reads it is done.

use crate::check;
use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::project::{Model, Project, SinkTarget};
use crate::results::{self, Event, RunFolder, RunResults, SinkResult, Status, StepResult};
use crate::settings::{Class, LeaseSpec};
use crate::sources::{self, SourceTables};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use spillway_engine::query::JoinReport;
use spillway_engine::{query, session, tables};
use spillway_governor::{fmt_bytes, Governor, LeaseRequest, PoolOptions, Profile};
use spillway_tiers::file::WriteOptions;
use spillway_tiers::{read, DiskQuota, HandoffStore, Hints, Intermediate, Materialize, SpillRoot, TierConfig};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

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
    pub spill_root: PathBuf,
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
}

impl RunOptions {
    /// Defaults for `cores` cores with temp space under `spill_root`.
    pub fn new(cores: usize, spill_root: impl Into<PathBuf>) -> Self {
        Self {
            select: None,
            fail_fast: false,
            jobs: cores.max(1),
            cores: cores.max(1),
            spill_root: spill_root.into(),
            max_spill: None,
            unspillable_reserve: 0.2,
            materialize: None,
            generator: sources::Generator::InProcess,
            cancel: None,
        }
    }
}

/// Everything the model tasks share.
struct Shared {
    project: Project,
    dag: Dag,
    governor: Governor,
    store: HandoffStore,
    quota: Arc<DiskQuota>,
    datafusion_dir: PathBuf,
    sources: SourceTables,
    /// Unselected upstream models read from their published sink files.
    external: BTreeMap<String, String>,
    /// Selected models reading each model.
    consumers: BTreeMap<String, usize>,
    options: RunOptions,
    heavy_running: AtomicUsize,
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
}

/// Validates `project`, then runs the selected models under `governor`. Returns the results
/// (also written to the run's folder) whether or not models failed; `Err` only for problems found
/// before any work started, or when the run's folder or temp space cannot be set up.
pub async fn run(project: &Project, governor: &Governor, options: RunOptions, observer: Observer) -> Result<RunResults> {
    let check::Validated { dag, selected, postgres } = check::validate_and_open(project, options.select.as_deref()).await?;
    let chosen: BTreeSet<&String> = selected.iter().collect();
    // Upstream models left out of the selection are read from their published sink files.
    let mut external = BTreeMap::new();
    let mut problems = Vec::new();
    for m in &selected {
        for up in dag.upstream[m].iter().filter(|u| !chosen.contains(u)) {
            let published =
                project.sinks.values().filter(|s| &s.model == up).filter_map(|s| s.file()).map(|p| project.dir.join(p)).find(|p| p.is_file());
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
    if let Some(e) = Error::many(problems) {
        return Err(e);
    }

    let run_id = results::new_run_id();
    let started_at = results::now_rfc3339();
    let folder = RunFolder::create(&project.dir, &run_id)?;
    let (root, swept) = SpillRoot::open(&options.spill_root)?;
    if !swept.dirs.is_empty() {
        tracing::info!(dirs = swept.dirs.len(), bytes = swept.bytes, "removed temp files left by dead runs");
    }
    let run_dir = root.create_run_dir()?;
    let quota = DiskQuota::new(options.max_spill.unwrap_or_else(|| DiskQuota::default_for(root.path())));
    let store = HandoffStore::new(
        governor.clone(),
        run_dir.subdir("handoff")?,
        quota.clone(),
        TierConfig::for_budget(governor.budget()),
    );
    let consumers = selected
        .iter()
        .map(|m| (m.clone(), dag.downstream[m].iter().filter(|d| chosen.contains(d)).count()))
        .collect();
    let t0 = governor.timeline().now_ms();
    let mut shared = Shared {
        project: project.clone(),
        dag: dag.clone(),
        governor: governor.clone(),
        store,
        quota,
        datafusion_dir: run_dir.subdir("datafusion")?,
        sources: SourceTables::default(),
        external,
        consumers,
        options: options.clone(),
        heavy_running: AtomicUsize::new(0),
        t0,
        folder,
        observer,
    };
    shared.emit(Event::RunStarted { t_ms: 0, run_id: run_id.clone(), models: selected.clone(), budget_bytes: governor.budget() });

    // Sources (generating TPC-H data the first time) on a blocking thread.
    let needed: Vec<String> =
        selected.iter().flat_map(|m| dag.sources[m].iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let (p, obs, threads, generator) = (project.clone(), shared.observer.clone(), options.cores, options.generator.clone());
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

    let shared = Arc::new(shared);
    let steps = schedule(&shared, &selected).await;
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
    let samples: Vec<_> = governor.timeline().samples().into_iter().filter(|s| s.t_ms >= t0).map(|mut s| {
        s.t_ms -= t0;
        s
    }).collect();
    shared.folder.finish(&results, &samples)?;
    drop(shared);
    drop(run_dir);
    Ok(results)
}

/// Runs `selected` (in dependency order) and returns one result per model, in that order.
async fn schedule(sh: &Arc<Shared>, selected: &[String]) -> Vec<StepResult> {
    let chosen: BTreeSet<&String> = selected.iter().collect();
    let mut waiting_on: BTreeMap<&String, usize> =
        selected.iter().map(|m| (m, sh.dag.upstream[m].iter().filter(|u| chosen.contains(u)).count())).collect();
    let mut ready: VecDeque<String> = selected.iter().filter(|m| waiting_on[m] == 0).cloned().collect();
    let mut readers_left = sh.consumers.clone();
    let mut outputs: HashMap<String, Arc<Intermediate>> = HashMap::new();
    let mut done: BTreeMap<String, StepResult> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    let heavy_slots = sh.governor.config().heavy_slots.max(1);
    let mut heavy_in_flight = 0usize;
    let mut stopped: Option<String> = None;
    let is_heavy = |m: &str| sh.project.models[m].settings.class == Class::Heavy;

    loop {
        // Start what may start: heavy models only while a heavy slot is free, so light ones are
        // not held up behind a heavy model waiting for the slot.
        while stopped.is_none() && tasks.len() < sh.options.jobs {
            let pick = ready.iter().position(|m| !is_heavy(m) || heavy_in_flight < heavy_slots);
            let Some(i) = pick else { break };
            let m = ready.remove(i).expect("index from position");
            if is_heavy(&m) {
                heavy_in_flight += 1;
            }
            let inputs: Vec<(String, Arc<Intermediate>)> = sh.dag.upstream[&m]
                .iter()
                .filter_map(|u| outputs.get(u).map(|o| (u.clone(), o.clone())))
                .collect();
            let handle = tasks.spawn(run_model(sh.clone(), m.clone(), inputs));
            names.insert(handle.id(), m);
        }
        if tasks.is_empty() {
            break;
        }
        let joined = match &sh.options.cancel {
            Some(cancel) => tokio::select! {
                j = tasks.join_next_with_id() => j,
                _ = cancel.notified() => {
                    stopped = Some("the run was interrupted".into());
                    tasks.abort_all();
                    continue;
                }
            },
            None => tasks.join_next_with_id().await,
        };
        let Some(joined) = joined else { break };
        let (name, step, output) = match joined {
            Ok((id, (step, output))) => (names.remove(&id).unwrap_or_default(), step, output),
            Err(e) => {
                let name = names.remove(&e.id()).unwrap_or_default();
                if e.is_cancelled() {
                    continue; // recorded as skipped below
                }
                let mut step = StepResult::skipped(&name, class_of(sh, &name), String::new(), sh.now());
                step.status = Status::Error;
                step.error = Some(format!("{name} panicked: {e}"));
                (name, step, None)
            }
        };
        if is_heavy(&name) {
            heavy_in_flight -= 1;
        }
        // Inputs this model read may now be freed.
        for u in &sh.dag.upstream[&name] {
            if let Some(n) = readers_left.get_mut(u) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    outputs.remove(u);
                }
            }
        }
        if step.status == Status::Ok {
            if let Some(o) = output {
                if readers_left.get(&name).copied().unwrap_or(0) > 0 {
                    outputs.insert(name.clone(), o);
                }
            }
            for d in &sh.dag.downstream[&name] {
                if let Some(n) = waiting_on.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push_back(d.clone());
                    }
                }
            }
        } else if sh.options.fail_fast && stopped.is_none() {
            stopped = Some(format!("--fail-fast: stopped after {name} failed"));
            tasks.abort_all();
        }
        sh.emit(Event::ModelFinished { t_ms: sh.now(), step: Box::new(step.clone()) });
        done.insert(name, step);
    }
    drop(outputs);

    // Everything that did not run is skipped, saying why.
    let mut steps = Vec::new();
    for m in selected {
        let step = match done.remove(m) {
            Some(s) => s,
            None => {
                let failed_up = sh.dag.upstream[m].iter().find(|u| steps.iter().any(|s: &StepResult| &s.name == *u && s.status != Status::Ok));
                let why = match (failed_up, &stopped) {
                    (Some(u), _) => format!("upstream {u} did not complete"),
                    (None, Some(why)) => why.clone(),
                    (None, None) => "not run".into(),
                };
                let s = StepResult::skipped(m, class_of(sh, m), why, sh.now());
                sh.emit(Event::ModelFinished { t_ms: sh.now(), step: Box::new(s.clone()) });
                s
            }
        };
        steps.push(step);
    }
    steps
}

fn class_of(sh: &Shared, m: &str) -> String {
    sh.project.models.get(m).map_or("light".into(), |x| x.settings.class.to_string())
}

/// What one attempt produced.
struct Output {
    tier: String,
    reason: String,
    rows: u64,
    bytes: u64,
    intermediate: Option<Arc<Intermediate>>,
    sinks: Vec<SinkResult>,
}

/// What is known of an attempt, success or not.
#[derive(Default)]
struct Attempt {
    leased_ms: u64,
    spilled: u64,
    joins: Vec<JoinReport>,
}

/// Runs one model, retrying with escalation after `ResourcesExhausted`.
async fn run_model(sh: Arc<Shared>, name: String, inputs: Vec<(String, Arc<Intermediate>)>) -> (StepResult, Option<Arc<Intermediate>>) {
    let model = sh.project.models[&name].clone();
    let s = &model.settings;
    let heavy = s.class == Class::Heavy;
    let cores = sh.options.cores;
    let mut lease_bytes = sh.lease_bytes(s.lease);
    let mut partitions = if heavy { cores } else { (cores / 2).max(1) };
    let mut materialize = sh.options.materialize.unwrap_or(s.materialize);
    let started_abs = sh.governor.timeline().now_ms();
    let started_ms = sh.now();
    let mut spilled = 0;
    let mut joins: Vec<JoinReport>;
    let mut attempt = 0;
    let (outcome, leased_ms) = loop {
        attempt += 1;
        sh.emit(Event::ModelQueued { t_ms: sh.now(), model: name.clone(), lease_bytes, heavy });
        let mut info = Attempt::default();
        let plan = Plan { lease_bytes, partitions, materialize };
        let result = attempt_once(&sh, &model, &inputs, &plan, attempt, &mut info).await;
        spilled += info.spilled;
        joins = info.joins;
        match result {
            Err(e) if attempt <= s.retries && e.is_resources_exhausted() => {
                let escalation = match next_lease(&sh.governor, lease_bytes) {
                    Some(bigger) => {
                        let text = format!("lease {} -> {}", fmt_bytes(lease_bytes), fmt_bytes(bigger));
                        lease_bytes = bigger;
                        text
                    }
                    None => {
                        // Fewer partitions give each operator a larger share of the lease.
                        partitions = (partitions / 2).max(1);
                        if matches!(materialize, Materialize::Auto | Materialize::Memory) {
                            materialize = Materialize::Ipc;
                        }
                        format!(
                            "lease already {} (all that may be lent): disk hand-off, {partitions} partition(s)",
                            fmt_bytes(lease_bytes)
                        )
                    }
                };
                tracing::info!(model = %name, %escalation, "out of memory, retrying");
                sh.emit(Event::ModelRetry { t_ms: sh.now(), model: name.clone(), attempt: attempt + 1, error: e.to_string(), escalation });
            }
            other => break (other, info.leased_ms),
        }
    };
    sh.governor.sample_now();
    let finished_abs = sh.governor.timeline().now_ms();
    let (peak_resident, peak_rss) = sh.governor.timeline().peak_between(started_abs, finished_abs);
    let mut step = StepResult::skipped(&name, s.class.to_string(), String::new(), started_ms);
    step.attempts = attempt;
    step.lease_bytes = lease_bytes;
    step.partitions = partitions;
    step.peak_resident_bytes = peak_resident;
    step.peak_rss_bytes = peak_rss;
    step.spilled_bytes = spilled;
    step.joins = joins;
    step.leased_ms = leased_ms.max(started_ms);
    step.finished_ms = sh.now();
    step.elapsed_ms = step.finished_ms - started_ms;
    match outcome {
        Ok(out) => {
            step.status = Status::Ok;
            step.error = None;
            step.tier = Some(out.tier);
            step.tier_reason = Some(out.reason);
            step.rows = out.rows;
            step.bytes = out.bytes;
            step.sinks = out.sinks;
            (step, out.intermediate)
        }
        Err(e) => {
            step.status = Status::Error;
            step.error = Some(format!("{} ({}): {e}", name, model.path.display()));
            (step, None)
        }
    }
}

/// The next lease size up: the smallest profile (or all that may be lent) above `current`.
fn next_lease(governor: &Governor, current: u64) -> Option<u64> {
    let g = governor.config();
    [Profile::S, Profile::M, Profile::L]
        .into_iter()
        .map(|p| g.profile_bytes(p))
        .chain(std::iter::once(g.leasable()))
        .filter(|b| *b > current)
        .min()
}

/// How one attempt runs (retries change it).
struct Plan {
    lease_bytes: u64,
    partitions: usize,
    materialize: Materialize,
}

async fn attempt_once(
    sh: &Shared,
    model: &Model,
    inputs: &[(String, Arc<Intermediate>)],
    plan: &Plan,
    attempt: u32,
    info: &mut Attempt,
) -> Result<Output> {
    let Plan { lease_bytes, partitions, materialize } = *plan;
    let name = &model.name;
    let heavy = model.settings.class == Class::Heavy;
    let mut request = LeaseRequest::bytes(name.clone(), lease_bytes);
    if heavy {
        request = request.heavy();
    }
    let lease = sh.governor.lease(request).await?;
    info.leased_ms = sh.now();
    sh.emit(Event::ModelStarted { t_ms: info.leased_ms, model: name.clone(), attempt, lease_bytes: lease.bytes(), partitions });
    let _heavy = heavy.then(|| HeavyMark::new(&sh.heavy_running));
    let pool = lease.into_pool(PoolOptions {
        step: Some(name.clone()),
        unspillable_reserve: sh.options.unspillable_reserve,
        pressure_aware: true,
    });
    let mut options = session::SessionOptions::new(partitions, sh.datafusion_dir.clone());
    options.quota = Some(sh.quota.clone());
    let ctx = session::context(pool, &options)?;
    for table in &sh.dag.sources[name] {
        sh.sources.register(&ctx, table).await?;
    }
    for (up, intermediate) in inputs {
        read::register(&ctx, up, intermediate, partitions).await?;
    }
    for up in &sh.dag.upstream[name] {
        if let Some(location) = sh.external.get(up) {
            tables::register(&ctx, up, location).await?;
        }
    }
    let q = query::run_sql(&ctx, &model.sql).await?;
    let plan = q.plan.clone();
    let result = place(sh, model, &ctx, q.stream, materialize, heavy).await;
    info.spilled = query::spilled_bytes(&plan);
    info.joins = query::join_reports(&plan);
    result
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

/// Writes `stream` to one sink: a file published atomically, or a PostgreSQL table loaded as
/// [`spillway_postgres::load`] says (never half-loaded).
async fn publish(sink: &str, target: &SinkTarget, stream: SendableRecordBatchStream) -> Result<SinkResult> {
    match target {
        SinkTarget::File(path) => {
            let started = std::time::Instant::now();
            let w = spillway_tiers::file::write_stream(stream, path, &WriteOptions::default()).await?;
            Ok(SinkResult {
                name: sink.to_string(),
                path: path.clone(),
                rows: w.rows,
                bytes: w.bytes,
                elapsed_ms: started.elapsed().as_millis() as u64,
                wal_bytes: None,
                skipped: None,
            })
        }
        SinkTarget::Postgres { spec, .. } => {
            let report = spillway_postgres::load(spec, stream).await?;
            Ok(SinkResult {
                name: sink.to_string(),
                path: PathBuf::from(report.destination),
                rows: report.rows,
                bytes: report.bytes,
                elapsed_ms: report.elapsed_ms,
                wal_bytes: report.wal_bytes,
                skipped: None,
            })
        }
    }
}

/// Counts this process's heavy models holding their lease.
struct HeavyMark<'a>(&'a AtomicUsize);

impl<'a> HeavyMark<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for HeavyMark<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a model's rows go: a check's are counted (and must be none); a model read by no
/// selected model and published by exactly one sink streams straight into it; everything else
/// is handed off by size and then published to its sinks.
async fn place(
    sh: &Shared,
    model: &Model,
    ctx: &datafusion::prelude::SessionContext,
    mut stream: SendableRecordBatchStream,
    materialize: Materialize,
    heavy: bool,
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
        return Ok(Output { tier: "check".into(), reason: "a check: passes with no rows".into(), rows, bytes: 0, intermediate: None, sinks: vec![] });
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
    if readers == 0 && sinks.len() == 1 && sh.options.materialize.is_none() {
        let (sink, target) = &sinks[0];
        let published = publish(sink, target, stream).await?;
        skipped.insert(0, published.clone());
        return Ok(Output {
            tier: "sink".into(),
            reason: format!("read by no other model: streamed straight into sink {sink}"),
            rows: published.rows,
            bytes: published.bytes,
            intermediate: None,
            sinks: skipped,
        });
    }
    let hints = Hints {
        materialize,
        checkpoint: model.settings.checkpoint,
        heavy_running: sh.heavy_running.load(Ordering::Relaxed) > usize::from(heavy),
        expected_bytes: None,
    };
    let intermediate = sh.store.write(name, stream, &hints).await?;
    let info = intermediate.info().clone();
    let mut published = Vec::new();
    for (i, (sink, target)) in sinks.into_iter().enumerate() {
        let table = format!("__spillway_sink_{i}");
        read::register(ctx, &table, &intermediate, 1).await?;
        let df = ctx.table(table.as_str()).await.map_err(spillway_engine::Error::from)?;
        let stream = df.execute_stream().await.map_err(spillway_engine::Error::from)?;
        published.push(publish(sink, &target, stream).await?);
    }
    published.extend(skipped);
    Ok(Output {
        tier: info.tier.to_string(),
        reason: info.reason,
        rows: info.rows,
        bytes: info.bytes,
        intermediate: Some(intermediate),
        sinks: published,
    })
}
