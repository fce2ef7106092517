//! `spillway views serve`: one long-lived process keeps every view of a project up to date as
//! change files arrive, and says how it is doing.
//!
//! ```text
//!   serve(views, shared, options)
//!     ┌─▶ wait: a folder watch (inotify, via `notify`) wakes it; a poll every `options.poll`
//!     │   is the fallback (network file systems, a folder created later)
//!     │   pending change files, in name order ─▶ Views::apply_file, one transaction at a time:
//!     │   a file is read only when the views have absorbed the one before (backpressure)
//!     │   a stop (SIGINT/SIGTERM, Shared::stop) is honoured between transactions, never inside
//!     │   after a burst: jemalloc's free pages go back to the OS
//!     └── Shared: the Snapshot that `/status` shows and `/metrics` renders (metrics_text)
//! ```
//!
//! Change files must appear whole: write them under a name starting with `.` or `_` and rename
//! them into place (such names are never read). A change file that cannot be applied stops the
//! loop with its error; nothing of it is committed.

use crate::error::Result;
use crate::store::ViewStatus;
use crate::Views;
use serde::Serialize;
use spillway_governor::{Governor, Pressure};
use std::collections::VecDeque;
use std::fmt::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Notify};

/// How many of the last change files the latency percentiles are taken over.
const LATENCY_WINDOW: usize = 1000;
/// The window of the changes/s rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Where a `serve` process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Populating the views and replaying the log.
    #[default]
    Hydrating,
    /// Populated; starting the PostgreSQL stream (logical replication) it follows.
    Connecting,
    /// Applying change files as they arrive.
    Live,
    /// Asked to stop: finishing the transaction in flight.
    Stopping,
}

/// Percentiles of a latency, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Change files measured (at most the last 1,000).
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(window: &VecDeque<f64>) -> Latency {
        let mut v: Vec<f64> = window.iter().copied().collect();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Latency { count: v.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: v[v.len() - 1] }
    }
}

/// What a `serve` process shows of its views (`/status`, and the view part of `/metrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Hydrating, live or stopping.
    pub phase: Phase,
    /// When the process started (RFC 3339, UTC).
    pub started_at: String,
    /// Views in the project.
    pub views_total: usize,
    /// Of those, populated so far.
    pub views_populated: usize,
    /// Population and log replay, milliseconds.
    pub populate_ms: u64,
    /// Logged transactions replayed at start.
    pub replayed: usize,
    /// Transactions in the log (all processes).
    pub transactions: u64,
    /// Change files applied by this process.
    pub applied_now: u64,
    /// Change rows applied by this process.
    pub change_rows: u64,
    /// Change rows per second over the last minute.
    pub changes_per_s: f64,
    /// Change files waiting.
    pub pending_files: usize,
    /// Age of the oldest waiting change file (from its modification time), milliseconds.
    pub lag_ms: u64,
    /// From a change file's modification time (or a PostgreSQL transaction's commit) to its
    /// views' sinks published.
    pub latency: Latency,
    /// From reading a change file (or a source transaction's first change) to its views' sinks
    /// published.
    pub apply: Latency,
    /// The followed PostgreSQL slot's durable position, if a source is followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_lsn: Option<String>,
    /// Per view.
    pub views: Vec<ViewStatus>,
}

/// The process's memory, read when `/status` or `/metrics` is asked for.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// The budget.
    pub budget: u64,
    /// Bytes lent out in leases.
    pub leased: u64,
    /// Bytes the views' state is charged (sum over views).
    pub state: u64,
    /// jemalloc resident bytes.
    pub resident: u64,
    /// Kernel resident set size.
    pub rss: u64,
    /// Anonymous resident memory (what the budget governs).
    pub rss_anon: u64,
    /// Highest RSS seen.
    pub peak_rss: u64,
    /// The pressure level.
    pub pressure: Pressure,
    /// Bytes in spill files now.
    pub spilled: u64,
    /// Most bytes in spill files at once.
    pub spilled_peak: u64,
}

/// What the serve loop and its observers (the HTTP endpoint, the signal handler) share.
#[derive(Debug)]
pub struct Shared {
    snapshot: Mutex<Snapshot>,
    marks: Mutex<Vec<Mark>>,
    stop: watch::Sender<bool>,
    wake: Notify,
}

impl Shared {
    /// A new, hydrating process started at `started_at`.
    pub fn new(started_at: String) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: Mutex::new(Snapshot { started_at, ..Snapshot::default() }),
            marks: Mutex::new(Vec::new()),
            stop: watch::Sender::new(false),
            wake: Notify::new(),
        })
    }

    /// The snapshot as it is now.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Changes the snapshot.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // A panic while holding it leaves a snapshot that is still readable.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's marks so far.
    pub fn marks(&self) -> Vec<Mark> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn mark(&self, m: Mark) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if marks.len() >= MAX_MARKS {
            let mut i = 0;
            marks.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
        marks.push(m);
    }

    /// Asks the loop to stop after the transaction in flight.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        self.update(|s| s.phase = Phase::Stopping);
        self.wake.notify_one();
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Wakes the loop to look for change files now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once a stop is asked for.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// How `serve` looks for change files, and the governor whose clock its marks use.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How often to look when no folder event arrived.
    pub poll: Duration,
    /// The process's governor.
    pub governor: Governor,
}

/// A moment of a serve session, for its report: the end of hydration or one transaction.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mark {
    /// Milliseconds on the governor's timeline.
    pub t_ms: u64,
    /// Whether it ends hydration (otherwise it is a transaction).
    pub hydrated: bool,
    /// The views' state bytes after it.
    pub state_bytes: u64,
    /// Change rows of the transaction.
    pub rows: u64,
}

/// Most marks kept; beyond it every other one is dropped (older history gets coarser).
const MAX_MARKS: usize = 100_000;

/// Keeps `views` up to date until a stop is asked for: publishes their state once, then applies
/// change files as they arrive.
pub async fn serve(views: &mut Views, shared: &Arc<Shared>, options: &ServeOptions) -> Result<()> {
    views.publish_state().await?;
    if views.follows_postgres() {
        // Started here, not inside the loop's select: a start slower than the poll interval
        // would be dropped there and begun again, forever.
        shared.update(|s| s.phase = Phase::Connecting);
        tokio::select! {
            started = views.start_cdc() => started?,
            _ = shared.stopped() => {
                shared.update(|s| s.phase = Phase::Stopping);
                return Ok(());
            }
        }
    }
    let _watcher = watch(views, shared);
    let mut rates: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut latency: VecDeque<f64> = VecDeque::new();
    let mut apply: VecDeque<f64> = VecDeque::new();
    let status = views.status();
    shared.update(|s| {
        if matches!(s.phase, Phase::Hydrating | Phase::Connecting) {
            s.phase = Phase::Live;
        }
        s.populate_ms = status.populate_ms;
        s.replayed = views.replayed();
        s.transactions = views.applied();
        s.slot_lsn = status.slot_lsn;
        s.views = status.views;
    });
    let state = |views: &Views| views.status().views.iter().map(|v| v.state_bytes).sum::<u64>();
    let timeline_ms = || options.governor.timeline().now_ms();
    shared.mark(Mark { t_ms: timeline_ms(), hydrated: true, state_bytes: state(views), rows: 0 });
    let mut cdc_burst = 0u32;
    while !shared.stopping() {
        // Change files wait while a PostgreSQL transaction is being applied: the two never
        // interleave, in the views, the sinks or the log.
        let pending = if views.mid_transaction() { Vec::new() } else { views.pending()? };
        shared.update(|s| {
            s.pending_files = pending.len();
            s.lag_ms = pending.first().map_or(0, |(_, p)| age_ms(p));
        });
        let mut applied = false;
        for (i, (table, path)) in pending.iter().enumerate() {
            if shared.stopping() {
                break;
            }
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let done = views.apply_file(table, path).await?;
            applied = true;
            let rate = rate_of(&mut rates, done.rows);
            push(&mut apply, done.us as f64 / 1000.0);
            if let Some(m) = modified {
                let ms = SystemTime::now().duration_since(m).unwrap_or_default().as_secs_f64() * 1000.0;
                push(&mut latency, ms);
            }
            let status = views.status();
            let state_bytes = status.views.iter().map(|v| v.state_bytes).sum();
            shared.mark(Mark { t_ms: timeline_ms(), hydrated: false, state_bytes, rows: done.rows });
            let rest = &pending[i + 1..];
            shared.update(|s| {
                s.transactions = views.applied();
                s.applied_now += 1;
                s.change_rows += done.rows;
                s.changes_per_s = rate;
                s.pending_files = rest.len();
                s.lag_ms = rest.first().map_or(0, |(_, p)| age_ms(p));
                s.latency = Latency::of(&latency);
                s.apply = Latency::of(&apply);
                s.views = status.views;
            });
            tracing::info!(file = %done.file, rows = done.rows, ms = done.us / 1000, changed = done.views_changed.len(), "change applied");
        }
        if applied {
            // A burst is over: what it freed goes back to the OS.
            spillway_governor::jemalloc::purge_all_arenas();
            continue; // more may have arrived meanwhile
        }
        let event = tokio::select! {
            _ = shared.wake.notified() => None,
            _ = tokio::time::sleep(options.poll) => None,
            e = views.next_cdc() => Some(e?),
        };
        let Some(event) = event else { continue };
        // A source transaction from PostgreSQL: its events until its commit.
        if let Some(done) = views.apply_cdc(event).await? {
            let rate = rate_of(&mut rates, done.rows);
            push(&mut apply, done.us as f64 / 1000.0);
            let now_us =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros() as i64;
            push(&mut latency, (now_us - done.commit_us).max(0) as f64 / 1000.0);
            let status = views.status();
            let state_bytes = status.views.iter().map(|v| v.state_bytes).sum();
            shared.mark(Mark { t_ms: timeline_ms(), hydrated: false, state_bytes, rows: done.rows });
            shared.update(|s| {
                s.transactions = views.applied();
                s.applied_now += 1;
                s.change_rows += done.rows;
                s.changes_per_s = rate;
                s.latency = Latency::of(&latency);
                s.apply = Latency::of(&apply);
                s.slot_lsn = status.slot_lsn.clone();
                s.views = status.views;
            });
            tracing::debug!(lsn = %crate::cdc::lsn_text(done.end_lsn), rows = done.rows, parts = done.parts, changed = done.views_changed.len(), "source transaction applied");
            cdc_burst += 1;
            if cdc_burst >= 1000 {
                spillway_governor::jemalloc::purge_all_arenas();
                cdc_burst = 0;
            }
        }
    }
    views.stop_cdc().await;
    shared.update(|s| s.phase = Phase::Stopping);
    Ok(())
}

/// Rows per second over the last [`RATE_WINDOW`], with `rows` just applied.
fn rate_of(rates: &mut VecDeque<(Instant, u64)>, rows: u64) -> f64 {
    let now = Instant::now();
    rates.push_back((now, rows));
    while rates.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
        rates.pop_front();
    }
    let since = rates.front().map_or(Duration::ZERO, |(t, _)| now.duration_since(*t));
    rates.iter().map(|(_, r)| *r).sum::<u64>() as f64 / since.as_secs_f64().max(1.0)
}

fn push(window: &mut VecDeque<f64>, v: f64) {
    if window.len() == LATENCY_WINDOW {
        window.pop_front();
    }
    window.push_back(v);
}

fn age_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Watches the change folders that exist; a folder event wakes the loop. `None` (polling only)
/// when the platform's watch cannot be set up.
fn watch(views: &Views, shared: &Arc<Shared>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let wake = Arc::downgrade(shared);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            if let Some(s) = wake.upgrade() {
                s.wake();
            }
        }
    })
    .map_err(|e| tracing::warn!("no folder watch ({e}): polling for change files"))
    .ok()?;
    for dir in views.change_dirs() {
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::Recursive) {
            tracing::debug!(dir = %dir.display(), "not watched ({e}): polled");
        }
    }
    Some(watcher)
}

/// `/metrics`: the snapshot and the memory in Prometheus' text format (version 0.0.4).
pub fn metrics_text(s: &Snapshot, m: &Memory) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let per_view = |f: &dyn Fn(&ViewStatus) -> f64| -> Vec<(String, f64)> {
        s.views.iter().map(|v| (format!("{{view=\"{}\"}}", escape(&v.name)), f(v))).collect()
    };
    metric(
        "spillway_views_live",
        "gauge",
        "1 once every view is populated and changes are applied.",
        &one(f64::from(u8::from(s.phase == Phase::Live))),
    );
    metric("spillway_views_populated", "gauge", "Views populated so far.", &one(s.views_populated as f64));
    metric("spillway_views_transactions", "gauge", "Transactions in the views' log.", &one(s.transactions as f64));
    metric(
        "spillway_views_change_files_total",
        "counter",
        "Change files applied by this process.",
        &one(s.applied_now as f64),
    );
    metric(
        "spillway_views_change_rows_total",
        "counter",
        "Change rows applied by this process.",
        &one(s.change_rows as f64),
    );
    metric(
        "spillway_views_pending_files",
        "gauge",
        "Change files waiting to be applied.",
        &one(s.pending_files as f64),
    );
    metric(
        "spillway_views_lag_seconds",
        "gauge",
        "Age of the oldest change file waiting.",
        &one(s.lag_ms as f64 / 1000.0),
    );
    metric(
        "spillway_views_latency_seconds",
        "summary",
        "From a change file's modification time to its views' sinks published (last 1,000 files).",
        &[
            ("{quantile=\"0.5\"}".into(), s.latency.p50_ms / 1000.0),
            ("{quantile=\"0.99\"}".into(), s.latency.p99_ms / 1000.0),
        ],
    );
    metric("spillway_view_rows", "gauge", "Rows a view holds.", &per_view(&|v| v.rows as f64));
    metric(
        "spillway_view_state_bytes",
        "gauge",
        "Bytes of a view's operator state in memory.",
        &per_view(&|v| v.state_bytes as f64),
    );
    metric(
        "spillway_view_transactions_total",
        "counter",
        "Transactions that changed a view (this process).",
        &per_view(&|v| v.transactions as f64),
    );
    metric(
        "spillway_view_change_rows_total",
        "counter",
        "Rows of a view's changes (this process).",
        &per_view(&|v| v.change_rows as f64),
    );
    metric(
        "spillway_view_busy_seconds_total",
        "counter",
        "Time a view spent absorbing transactions (this process).",
        &per_view(&|v| v.busy_us as f64 / 1e6),
    );
    metric("spillway_memory_budget_bytes", "gauge", "The process's memory budget.", &one(m.budget as f64));
    metric("spillway_memory_leased_bytes", "gauge", "Bytes of the budget lent out in leases.", &one(m.leased as f64));
    metric("spillway_memory_state_bytes", "gauge", "Bytes the views' state is charged.", &one(m.state as f64));
    metric("spillway_memory_resident_bytes", "gauge", "jemalloc resident bytes.", &one(m.resident as f64));
    metric("spillway_memory_rss_bytes", "gauge", "Kernel resident set size.", &one(m.rss as f64));
    metric("spillway_memory_rss_anon_bytes", "gauge", "Anonymous resident memory.", &one(m.rss_anon as f64));
    metric("spillway_memory_peak_rss_bytes", "gauge", "Highest resident set size seen.", &one(m.peak_rss as f64));
    metric(
        "spillway_memory_pressure",
        "gauge",
        "Pressure level: 0 normal, 1 moderate, 2 high, 3 critical.",
        &one(m.pressure as u8 as f64),
    );
    metric("spillway_spill_bytes", "gauge", "Bytes in spill files now.", &one(m.spilled as f64));
    metric("spillway_spill_peak_bytes", "gauge", "Most bytes in spill files at once.", &one(m.spilled_peak as f64));
    out
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_and_metrics_text() {
        let w: VecDeque<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&w);
        assert_eq!((l.count, l.p50_ms, l.p99_ms, l.max_ms), (100, 51.0, 99.0, 100.0));
        let s = Snapshot {
            phase: Phase::Live,
            views: vec![ViewStatus { name: "a\"b".into(), rows: 3, state_bytes: 10, ..ViewStatus::default() }],
            ..Snapshot::default()
        };
        let memory = Memory {
            budget: 1 << 20,
            leased: 0,
            state: 10,
            resident: 0,
            rss: 0,
            rss_anon: 0,
            peak_rss: 0,
            pressure: Pressure::Normal,
            spilled: 0,
            spilled_peak: 0,
        };
        let text = metrics_text(&s, &memory);
        assert!(text.contains("spillway_views_live 1\n"), "{text}");
        assert!(text.contains("spillway_view_rows{view=\"a\\\"b\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE spillway_memory_budget_bytes gauge\nspillway_memory_budget_bytes 1048576\n"));
    }
}
