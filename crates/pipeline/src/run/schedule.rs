//! The scheduler: starts a model when its upstream models are done, up to `jobs` at once, heavy
//! models only while a heavy slot is free; frees an output when its last reader is done; records
//! why each model that did not run was skipped.
//!
//! At `critical` memory pressure (resident memory ≥ 95% of the budget by default) it does not
//! wait for the kernel: it cancels the lowest-priority model holding its lease (a check before a light
//! model before a heavy one; of those, the one started last, which loses the least work), which
//! returns its lease, and queues it again at the front with a disk-first plan
//! ([`Plan::disk_first`](super::attempt::Plan::disk_first): one partition, half the lease, hand-off
//! on disk, no TopK). A model is requeued so at most once; while pressure stays critical another
//! model is cancelled every second.

use super::attempt::run_model;
use super::Shared;
use crate::results::{Event, Status, StepResult};
use spillway_governor::Pressure;
use spillway_project::Class;
use spillway_tiers::Intermediate;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running model's task.
struct Running {
    name: String,
    /// Start order: the latest started is cancelled first.
    seq: u64,
    abort: tokio::task::AbortHandle,
}

/// How often pressure is looked at again while it stays critical, and the least time between
/// two cancellations.
const CRITICAL_RECHECK: Duration = Duration::from_millis(1000);

/// Runs `selected` (in dependency order) and returns one result per model, in that order.
pub(super) async fn schedule(sh: &Arc<Shared>, selected: &[String]) -> Vec<StepResult> {
    let chosen: BTreeSet<&String> = selected.iter().collect();
    let mut waiting_on: BTreeMap<&String, usize> =
        selected.iter().map(|m| (m, sh.dag.upstream[m].iter().filter(|u| chosen.contains(u)).count())).collect();
    let mut ready: VecDeque<String> = selected.iter().filter(|m| waiting_on[m] == 0).cloned().collect();
    let mut readers_left = sh.consumers.clone();
    let mut outputs: HashMap<String, Arc<Intermediate>> = HashMap::new();
    let mut done: BTreeMap<String, StepResult> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Running> = HashMap::new();
    let mut seq = 0u64;
    // Models cancelled at critical pressure (waiting to be requeued) and requeued (disk-first).
    let mut cancelling: HashSet<tokio::task::Id> = HashSet::new();
    let mut disk_first: HashSet<String> = HashSet::new();
    let mut last_cancel: Option<Instant> = None;
    let mut pressure = sh.governor.subscribe();
    let mut recheck = tokio::time::interval(CRITICAL_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let heavy_slots = sh.governor.config().heavy_slots.max(1);
    let mut heavy_in_flight = 0usize;
    let mut stopped: Option<String> = None;
    let is_heavy = |m: &str| super::attempt::runs_heavy(&sh.project.models[m]);

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
            let inputs: Vec<(String, Arc<Intermediate>)> =
                sh.dag.upstream[&m].iter().filter_map(|u| outputs.get(u).map(|o| (u.clone(), o.clone()))).collect();
            let handle = tasks.spawn(run_model(sh.clone(), m.clone(), inputs, disk_first.contains(&m)));
            seq += 1;
            running.insert(handle.id(), Running { name: m, seq, abort: handle });
        }
        if tasks.is_empty() {
            break;
        }
        let interrupted = async {
            match &sh.options.cancel {
                Some(cancel) => cancel.notified().await,
                None => std::future::pending().await,
            }
        };
        let joined = tokio::select! {
            j = tasks.join_next_with_id() => j,
            _ = interrupted => {
                stopped = Some("the run was interrupted".into());
                tasks.abort_all();
                continue;
            }
            _ = pressure.changed() => {
                relieve(sh, &running, &disk_first, &mut cancelling, &mut last_cancel);
                continue;
            }
            _ = recheck.tick() => {
                relieve(sh, &running, &disk_first, &mut cancelling, &mut last_cancel);
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (name, step, output) = match joined {
            Ok((id, (step, output))) => (running.remove(&id).map(|r| r.name).unwrap_or_default(), step, output),
            Err(e) => {
                let name = running.remove(&e.id()).map(|r| r.name).unwrap_or_default();
                if e.is_cancelled() && cancelling.remove(&e.id()) {
                    // Cancelled at critical pressure: its lease is back; run it again first,
                    // disk-first. Its inputs are still held (their readers were not counted down).
                    if is_heavy(&name) {
                        heavy_in_flight -= 1;
                    }
                    disk_first.insert(name.clone());
                    sh.emit(Event::ModelRetry {
                        t_ms: sh.now(),
                        model: name.clone(),
                        attempt: 1,
                        error: "cancelled: memory pressure reached critical".into(),
                        escalation: "requeued disk-first: 1 partition, half the lease, hand-off on disk, no TopK"
                            .into(),
                    });
                    ready.push_front(name);
                    continue;
                }
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
        sh.record(&step);
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
                let failed_up = sh.dag.upstream[m]
                    .iter()
                    .find(|u| steps.iter().any(|s: &StepResult| &s.name == *u && s.status != Status::Ok));
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

/// At critical pressure, cancels the lowest-priority model holding its lease and not requeued
/// before (a check, then light, then heavy; the latest started first), at most once per
/// [`CRITICAL_RECHECK`].
fn relieve(
    sh: &Shared,
    running: &HashMap<tokio::task::Id, Running>,
    disk_first: &HashSet<String>,
    cancelling: &mut HashSet<tokio::task::Id>,
    last_cancel: &mut Option<Instant>,
) {
    if sh.governor.pressure() < Pressure::Critical || last_cancel.is_some_and(|t| t.elapsed() < CRITICAL_RECHECK) {
        return;
    }
    let rank = |name: &str| {
        let s = &sh.project.models[name].settings;
        if s.check {
            0
        } else if s.class == Class::Heavy {
            2
        } else {
            1
        }
    };
    // Only a model holding its lease frees memory when cancelled.
    let holding = sh.holding.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let victim = running
        .iter()
        .filter(|(id, r)| !cancelling.contains(*id) && !disk_first.contains(&r.name) && holding.contains(&r.name))
        .min_by_key(|(_, r)| (rank(&r.name), std::cmp::Reverse(r.seq)));
    if let Some((id, r)) = victim {
        tracing::warn!(model = %r.name, "memory pressure is critical: cancelling the model to run it again disk-first");
        r.abort.abort();
        cancelling.insert(*id);
        *last_cancel = Some(Instant::now());
    }
}

pub(super) fn class_of(sh: &Shared, m: &str) -> String {
    sh.project.models.get(m).map_or("light".into(), |x| x.settings.class.to_string())
}
