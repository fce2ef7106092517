//! One model's attempts: a lease, a session, its inputs registered, its SQL run; retries with
//! escalation after a refused memory reservation.

use super::publish::{place, Output};
use super::Shared;
use crate::error::Result;
use crate::results::{Event, Status, StepResult};
use futures::StreamExt;
use spillway_engine::query::JoinReport;
use spillway_engine::{query, session, tables};
use spillway_governor::{fmt_bytes, Governor, LeaseRequest, PoolOptions, Profile};
use spillway_project::Model;
use spillway_project::{Class, LeaseSpec};
use spillway_tiers::{read, Intermediate, Materialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What is known of an attempt, success or not.
#[derive(Default)]
pub(super) struct Attempt {
    pub(super) leased_ms: u64,
    pub(super) spilled: u64,
    pub(super) joins: Vec<JoinReport>,
    /// The operator that cannot spill and was refused memory, if that is how it failed.
    pub(super) refused: Option<String>,
    /// The child process, for an isolated model (carried over from earlier attempts).
    pub(super) isolated: Option<crate::results::Isolated>,
    /// The Ballista job, for a model on the cluster.
    pub(super) cluster: Option<crate::results::OnCluster>,
}

/// How one attempt runs (retries change it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Plan {
    pub(super) lease_bytes: u64,
    pub(super) partitions: usize,
    pub(super) materialize: Materialize,
    /// Sorts with a limit run as external sorts (which spill) instead of TopK (which cannot).
    pub(super) no_topk: bool,
}

impl Plan {
    /// The plan of a model requeued after being cancelled at critical memory pressure: one
    /// partition, half the lease (at least profile S), hand-off on disk, no TopK.
    pub(super) fn disk_first(self, governor: &Governor) -> Plan {
        let small = governor.config().profile_bytes(Profile::S);
        Plan {
            lease_bytes: (self.lease_bytes / 2).max(small).min(self.lease_bytes),
            partitions: 1,
            materialize: match self.materialize {
                Materialize::Auto | Materialize::Memory => Materialize::Ipc,
                other => other,
            },
            no_topk: true,
        }
    }
}

/// The next plan after a refused memory reservation, chosen by what can help: first a plan
/// without the operator that was refused, where there is one (TopK, which cannot spill → an
/// external sort with a limit, which does); then a larger lease while the budget has one; then
/// one partition, so one instance of the operator has the whole lease. `None` when nothing left
/// can help: the model fails with the refusal.
pub(super) fn escalate(plan: &Plan, refused: Option<&str>, governor: &Governor) -> Option<(Plan, String)> {
    let who = refused.unwrap_or("an operator that cannot spill");
    if refused.is_some_and(|r| r.starts_with("TopK")) && !plan.no_topk {
        let text = format!("{who} cannot spill: sorts with a limit run as external sorts (they spill)");
        return Some((Plan { no_topk: true, ..*plan }, text));
    }
    if let Some(bigger) = next_lease(governor, plan.lease_bytes) {
        let text = format!("lease {} -> {}", fmt_bytes(plan.lease_bytes), fmt_bytes(bigger));
        return Some((Plan { lease_bytes: bigger, ..*plan }, text));
    }
    if plan.partitions > 1 {
        let all = format!("lease already {} (all that may be lent)", fmt_bytes(plan.lease_bytes));
        let text = format!("{all}: 1 partition(s), so one instance of {who} has the whole lease");
        return Some((Plan { partitions: 1, ..*plan }, text));
    }
    None
}

/// Runs one model, retrying with escalation after `ResourcesExhausted`; `disk_first` starts
/// from [`Plan::disk_first`] (a model requeued at critical pressure).
pub(super) async fn run_model(
    sh: Arc<Shared>,
    name: String,
    inputs: Vec<(String, Arc<Intermediate>)>,
    disk_first: bool,
) -> (StepResult, Option<Arc<Intermediate>>) {
    let model = sh.project.models[&name].clone();
    let s = &model.settings;
    let heavy = runs_heavy(&model);
    let cores = sh.options.cores;
    // On the cluster, the lease covers only the rows as they arrive here: profile S at most.
    let lease = match super::cluster::wanted(&model) {
        true => sh.lease_bytes(s.lease).min(sh.lease_bytes(LeaseSpec::Profile(Profile::S))),
        false => sh.lease_bytes(s.lease),
    };
    let mut plan = Plan {
        lease_bytes: lease,
        partitions: if heavy { cores } else { (cores / 2).max(1) },
        materialize: sh.options.materialize.unwrap_or(s.materialize),
        no_topk: false,
    };
    if disk_first {
        plan = plan.disk_first(&sh.governor);
    }
    let started_abs = sh.governor.timeline().now_ms();
    let started_ms = sh.now();
    let mut spilled = 0;
    let mut joins: Vec<JoinReport>;
    let mut isolated = None;
    let mut cluster = None;
    let mut attempt = 0;
    let (outcome, leased_ms) = loop {
        attempt += 1;
        sh.emit(Event::ModelQueued { t_ms: sh.now(), model: name.clone(), lease_bytes: plan.lease_bytes, heavy });
        let mut info = Attempt { isolated: isolated.take(), ..Attempt::default() };
        let result = attempt_once(&sh, &model, &inputs, &plan, attempt, &mut info).await;
        spilled += info.spilled;
        joins = info.joins;
        isolated = info.isolated;
        cluster = info.cluster.or(cluster);
        let next = match &result {
            Err(e) if attempt <= s.retries && e.is_resources_exhausted() => {
                escalate(&plan, info.refused.as_deref(), &sh.governor)
            }
            Err(crate::Error::OomKilled { .. }) if attempt <= s.retries => Some(after_oom_kill(&plan, &sh.governor)),
            _ => None,
        };
        match (result, next) {
            (Err(e), Some((next, escalation))) => {
                tracing::info!(model = %name, %escalation, "out of memory, retrying");
                sh.emit(Event::ModelRetry {
                    t_ms: sh.now(),
                    model: name.clone(),
                    attempt: attempt + 1,
                    error: e.to_string(),
                    escalation,
                });
                plan = next;
            }
            (other, _) => break (other, info.leased_ms),
        }
    };
    let Plan { lease_bytes, partitions, .. } = plan;
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
    step.isolated = isolated;
    step.cluster = cluster;
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
            step.kept = out.kept;
            (step, out.intermediate)
        }
        Err(e) => {
            step.status = Status::Error;
            step.error = Some(format!("{} ({}): {e}", name, model.path.display()));
            (step, None)
        }
    }
}

/// The plan after an isolated model's child was OOM-killed: disk-first (one partition, hand-off
/// on disk, no TopK) with the next lease size up where the budget has one (the child's limit
/// grows with it), else the same lease.
fn after_oom_kill(plan: &Plan, governor: &Governor) -> (Plan, String) {
    let lease_bytes = next_lease(governor, plan.lease_bytes).unwrap_or(plan.lease_bytes);
    let next = Plan { lease_bytes, ..plan.disk_first(governor) };
    let text = format!(
        "oom-killed: retried disk-first (1 partition, hand-off on disk, no TopK), lease {} -> {}",
        fmt_bytes(plan.lease_bytes),
        fmt_bytes(lease_bytes)
    );
    (next, text)
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

async fn attempt_once(
    sh: &Shared,
    model: &Model,
    inputs: &[(String, Arc<Intermediate>)],
    plan: &Plan,
    attempt: u32,
    info: &mut Attempt,
) -> Result<Output> {
    let Plan { lease_bytes, partitions, no_topk, .. } = *plan;
    let name = &model.name;
    let heavy = runs_heavy(model);
    let mut request = LeaseRequest::bytes(name.clone(), lease_bytes);
    if heavy {
        request = request.heavy();
    }
    spillway_faults::point("lease-waiting");
    let lease = sh.governor.lease(request).await?;
    let _holding = Holding::new(sh, name);
    spillway_faults::point("lease-granted");
    info.leased_ms = sh.now();
    sh.emit(Event::ModelStarted {
        t_ms: info.leased_ms,
        model: name.clone(),
        attempt,
        lease_bytes: lease.bytes(),
        partitions,
    });
    let _heavy = heavy.then(|| HeavyMark::new(&sh.heavy_running));
    if super::isolated::wanted(model) {
        return super::isolated::run(sh, model, inputs, plan, lease, info).await;
    }
    if super::cluster::wanted(model) {
        return super::cluster::run(sh, model, inputs, plan, lease, info).await;
    }
    let pool = lease.into_pool(PoolOptions {
        step: Some(name.clone()),
        unspillable_reserve: sh.options.unspillable_reserve,
        pressure_aware: true,
        grow_to: None,
    });
    let mut options = session::SessionOptions::new(partitions, sh.temp_files.clone());
    options.no_topk = no_topk;
    let ctx = session::context(pool.clone(), &options)?;
    let result = run_in(sh, model, inputs, &ctx, plan, info).await;
    info.refused = pool.refused_unspillable();
    result
}

/// Registers the model's inputs in `ctx`, runs its SQL and places its output.
async fn run_in(
    sh: &Shared,
    model: &Model,
    inputs: &[(String, Arc<Intermediate>)],
    ctx: &datafusion::prelude::SessionContext,
    plan: &Plan,
    info: &mut Attempt,
) -> Result<Output> {
    let name = &model.name;
    let heavy = model.settings.class == Class::Heavy;
    for table in &sh.dag.sources[name] {
        sh.sources.register(ctx, table).await?;
    }
    for (up, intermediate) in inputs {
        read::register(ctx, up, intermediate, plan.partitions).await?;
    }
    for up in &sh.dag.upstream[name] {
        if let Some(location) = sh.external.get(up) {
            tables::register(ctx, up, location).await?;
        }
    }
    let q = query::run_sql(ctx, &model.sql).await?;
    let physical = q.plan.clone();
    let schema = q.stream.schema();
    let stream = q.stream.inspect(|_| spillway_faults::point("scan-batch"));
    let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream));
    let result = place(sh, model, ctx, stream, plan.materialize, heavy, None).await;
    info.spilled = query::spilled_bytes(&physical);
    info.joins = query::join_reports(&physical);
    result
}

/// Whether `model` does heavy work here: a heavy model holds the heavy slot and all cores,
/// unless it runs on the cluster (its work is the executors').
pub(super) fn runs_heavy(model: &Model) -> bool {
    model.settings.class == Class::Heavy && !super::cluster::wanted(model)
}

/// Marks a model as holding its lease (for the scheduler's choice at critical pressure).
struct Holding<'a>(&'a Shared, String);

impl<'a> Holding<'a> {
    fn new(sh: &'a Shared, name: &str) -> Self {
        sh.holding.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        Self(sh, name.to_string())
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.holding.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
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
