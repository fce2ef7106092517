//! Named fault points, for crash tests: `SPILLWAY_FAULT=NAME` (or `NAME@N`, the N-th time it is
//! reached) makes the process kill itself with `SIGKILL` at the point called `NAME`, the way the
//! OOM killer or a power cut would stop it: no destructor, no unwinding, no flush.
//!
//! ```text
//!   SPILLWAY_FAULT=publish-before-rename spillway run examples/tpch   ─▶ killed there (exit 137)
//!   SPILLWAY_FAULT_TRACE=points.txt      spillway run examples/tpch   ─▶ every point reached, once
//! ```
//!
//! `bench/faults.sh` and the crash tests run a project once with `SPILLWAY_FAULT_TRACE` to learn
//! which points it reaches, then once per point with `SPILLWAY_FAULT`, and check after each kill
//! that the next start leaves nothing behind and `run --resume` completes with the same outputs.
//!
//! Without either variable a point costs one relaxed atomic load. The points a run can reach are
//! listed in [`POINTS`] (with what the process is doing there); `docs/crash-safety.md` has the table.
//!
//! This is our own rather than the `fail` crate: `fail` compiles its points away unless a cargo
//! feature is on, and a feature only tests turn on makes the test build and `cargo build` resolve
//! different features (and rebuild DataFusion twice); we need the points live in the one binary.
#![warn(missing_docs)]

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

/// Every fault point, with what the process is doing when it is reached.
pub const POINTS: &[(&str, &str)] = &[
    ("run-started", "the run folder and manifest exist; no model has started"),
    ("sources-generating", "generating TPC-H data into staging folders"),
    ("sources-ready", "sources are ready; models are about to be scheduled"),
    ("lease-waiting", "a model waits for its lease"),
    ("lease-granted", "a model holds its lease, before its plan runs"),
    ("scan-batch", "a model's first result batch has arrived (inputs being scanned)"),
    ("spill-write", "an operator is writing a spill file"),
    ("handoff-ipc-write", "a hand-off is being written as an Arrow IPC file"),
    ("handoff-parquet-write", "a hand-off is being written as a Parquet file"),
    ("handoff-done", "a hand-off is complete"),
    ("checkpoint-write", "a checkpoint is being written to .spillway/state/"),
    ("checkpoint-before-rename", "a checkpoint is complete, before it is renamed into place"),
    ("sink-staging", "a file (a sink or a checkpoint) is being written to its staging file"),
    ("sink-staged", "a model's file sinks are all staged, none published"),
    ("postgres-copy", "a PostgreSQL sink's COPY is under way"),
    ("postgres-before-commit", "a PostgreSQL load is complete, before COMMIT"),
    ("publish-before-rename", "a staged file sink is about to be renamed into place"),
    ("publish-after-rename", "a staged file (sink or checkpoint) was renamed into place, its folder not yet synced"),
    ("publish-between-sinks", "one of a model's sinks is published, the next not yet"),
    ("model-done", "a model finished, before the manifest records it"),
    ("manifest-written", "the manifest records a finished model"),
    ("run-finishing", "every model ran; run results are being written"),
];

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNSET);
static CONFIG: OnceLock<Config> = OnceLock::new();

struct Config {
    kill: Option<(String, u64)>,
    hits: AtomicU64,
    trace: Option<Mutex<(std::fs::File, HashSet<String>)>>,
}

fn config() -> &'static Config {
    CONFIG.get_or_init(|| {
        let kill = std::env::var("SPILLWAY_FAULT").ok().filter(|v| !v.is_empty()).map(|v| match v.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1).max(1)),
            None => (v, 1),
        });
        let trace = std::env::var_os("SPILLWAY_FAULT_TRACE")
            .filter(|v| !v.is_empty())
            .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
            .map(|f| Mutex::new((f, HashSet::new())));
        Config { kill, hits: AtomicU64::new(0), trace }
    })
}

/// A fault point called `name` (one of [`POINTS`]).
#[inline]
pub fn point(name: &str) {
    match STATE.load(Ordering::Relaxed) {
        OFF => {}
        UNSET => {
            let c = config();
            STATE.store(if c.kill.is_some() || c.trace.is_some() { ON } else { OFF }, Ordering::Relaxed);
            point(name)
        }
        _ => reached(name),
    }
}

#[cold]
fn reached(name: &str) {
    let c = config();
    if let Some(trace) = &c.trace {
        if let Ok(mut t) = trace.lock() {
            if t.1.insert(name.to_string()) {
                let _ = writeln!(t.0, "{name}");
            }
        }
    }
    if let Some((kill, nth)) = &c.kill {
        if kill == name && c.hits.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
            // SAFETY: sending a signal to this very process; SIGKILL cannot be caught.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// Whether `name` is a known fault point.
pub fn is_known(name: &str) -> bool {
    POINTS.iter().any(|(p, _)| *p == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn points_are_unique_and_cheap_when_off() {
        let mut names: Vec<_> = super::POINTS.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::POINTS.len());
        assert!(names.len() >= 20);
        // No variable set in the test environment: nothing happens.
        super::point("run-started");
        assert!(super::is_known("publish-before-rename"));
    }
}
