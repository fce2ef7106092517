//! [`Governor`]: the process-wide budget, its sampler thread and its pressure level.

use crate::config::GovernorConfig;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseRequest, LeaseSize, Shared};
use crate::pressure::Pressure;
use crate::timeline::{Sample, Timeline};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::sync::watch;

/// The one memory budget of the process. Cheap to clone (all clones share the budget).
///
/// Creating a governor starts a sampler thread that reads jemalloc and `/proc/self/statm` every
/// [`GovernorConfig::sample_interval`] (a fifth of it while the kernel counts more than half the
/// budget), records the [`Timeline`], updates the [`Pressure`] level, purges jemalloc's free pages
/// under pressure and hands the process's resident code pages back to the page cache (`code`);
/// it stops when the last clone is dropped.
#[derive(Clone)]
pub struct Governor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("budget", &self.shared.config.budget)
            .field("leasable", &self.shared.leasable)
            .finish()
    }
}

impl Governor {
    /// Starts a governor with `config` (validated) and its sampler thread.
    pub fn new(config: GovernorConfig) -> Result<Self> {
        config.validate()?;
        let shared = Arc::new(Shared::new(config));
        let weak = Arc::downgrade(&shared);
        // Take one sample now so the timeline is never empty.
        sample_once(&shared);
        std::thread::Builder::new()
            .name("spillway-sampler".into())
            .spawn(move || sampler_loop(weak))
            .map_err(|e| Error::InvalidSetting { name: "sampler", reason: e.to_string() })?;
        Ok(Self { shared })
    }

    /// Borrows bytes from the budget, waiting in FIFO order while they are lent out.
    pub async fn lease(&self, req: LeaseRequest) -> Result<Lease> {
        self.shared.acquire(req).await
    }

    /// A lease granted only if it fits now and nobody is waiting; `None` otherwise. An empty
    /// lease (`bytes = 0`) that grows with [`Lease::try_grow`] suits holders of data whose size
    /// is only known as it arrives.
    pub fn try_lease_now(&self, name: &str, bytes: u64) -> Option<Lease> {
        self.shared.try_acquire_now(name, bytes)
    }

    /// Shorthand for a light lease of `size` named `name`.
    pub async fn lease_size(&self, name: impl Into<String>, size: LeaseSize) -> Result<Lease> {
        self.lease(LeaseRequest::new(name, size)).await
    }

    /// The configuration in force.
    pub fn config(&self) -> &GovernorConfig {
        &self.shared.config
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.shared.config.budget
    }

    /// Bytes that may be lent (budget less headroom).
    pub fn leasable(&self) -> u64 {
        self.shared.leasable
    }

    /// Bytes lent out right now.
    pub fn leased(&self) -> u64 {
        self.shared.leased()
    }

    /// Requests waiting in the queue right now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// Bytes DataFusion consumers reserve inside all leases right now.
    pub fn reserved(&self) -> u64 {
        self.shared.reserved.load(Ordering::Relaxed)
    }

    /// The machine-wide ledger in use: its file and capacity; `None` without one, or when it
    /// could not be used (the process then keeps to its own budget).
    pub fn ledger(&self) -> Option<(&std::path::Path, u64)> {
        self.shared.ledger.as_ref().filter(|l| !l.is_broken()).map(|l| (l.path(), l.capacity()))
    }

    /// The current pressure level.
    pub fn pressure(&self) -> Pressure {
        self.shared.pressure()
    }

    /// A receiver that sees every change of pressure level.
    pub fn subscribe(&self) -> watch::Receiver<Pressure> {
        self.shared.pressure_tx.subscribe()
    }

    /// The recorded memory timeline.
    pub fn timeline(&self) -> &Timeline {
        &self.shared.timeline
    }

    /// Takes and records a sample now (also done by the sampler thread).
    pub fn sample_now(&self) -> Sample {
        sample_once(&self.shared)
    }

    /// Share of every lease (parts per million) currently withheld because untracked memory has
    /// outgrown the headroom. Lease pools shrink by this share.
    pub fn squeeze_ppm(&self) -> u64 {
        self.shared.squeeze_ppm.load(Ordering::Relaxed)
    }

    /// Forces the pressure level (for tests and for callers that measure pressure themselves).
    /// The sampler overwrites it at its next reading.
    pub fn set_pressure(&self, p: Pressure) {
        set_pressure(&self.shared, p);
    }
}

fn set_pressure(shared: &Shared, p: Pressure) {
    let old = shared.pressure.swap(p as u8, Ordering::Relaxed);
    if old != p as u8 {
        shared.pressure_tx.send_replace(p);
        if p < Pressure::from_u8(old) {
            // Lower pressure may let queued leases through.
            shared.wake();
        }
        tracing::debug!(from = %Pressure::from_u8(old), to = %p, "pressure level changed");
    }
}

fn sample_once(shared: &Shared) -> Sample {
    let leased = shared.leased();
    let reserved = shared.reserved.load(Ordering::Relaxed);
    let mut s = shared.timeline.measure(leased, reserved);
    let budget = shared.config.budget;
    let used = in_use(&s, budget);
    let level = shared.config.pressure.level(used, budget);
    // The kernel also counts the free pages jemalloc holds until their decay time (1000ms). A
    // burst of frees (an aggregate emitting its state to spill it, a sort run written out) can
    // leave 100MiB of them resident while new allocations take fresh pages: under pressure, by
    // our count or by the kernel's, they are handed back now (measured, issue #14: a `GROUP BY`
    // of 1.5M groups at 256MiB peaked at 1.30x the budget in anonymous memory without this, 0.90x
    // with it and the sampling below).
    let kernel_level = shared.config.pressure.level(kernel_count(&s, budget), budget);
    if level.max(kernel_level) >= Pressure::Moderate && s.resident.saturating_sub(s.allocated) >= (4 << 20) {
        crate::jemalloc::purge_all_arenas();
    }
    crate::code::this_process().trim_if_above(s.rss.saturating_sub(s.rss_anon));
    s.pressure_level = level as u8;
    // Memory that no reservation accounts for is allowed the headroom; whatever goes beyond it
    // is taken out of the leases (in proportion) so that reserved + untracked stays in budget.
    let headroom = budget.saturating_sub(shared.leasable);
    let excess = used.saturating_sub(reserved + headroom);
    let ppm = excess.saturating_mul(1_000_000).checked_div(leased).unwrap_or(0).min(1_000_000);
    shared.squeeze_ppm.store(ppm, Ordering::Relaxed);
    shared.squeeze_bytes.store(excess, Ordering::Relaxed);
    shared.timeline.record(s);
    set_pressure(shared, level);
    s
}

/// File-backed resident pages (the binary's code, mapped files) that come out of the headroom:
/// 15% of the budget from 256MiB up. Beyond that they count as memory in use. Below 256MiB they
/// are not counted: the 60-80MiB of code a query touches would leave a small lease nothing (at
/// 48MiB, squeezing them out made the example project 9x slower: 7.0s against 0.8s), and no lease can make up for
/// code larger than the budget's headroom.
fn file_allowance(budget: u64) -> u64 {
    if budget < (256 << 20) {
        u64::MAX
    } else {
        (budget as f64 * 0.15) as u64
    }
}

/// The memory the budget governs: anonymous resident memory (heap, stacks, C libraries'
/// allocations) less the free pages jemalloc holds for reuse (returned within a second, and reused
/// before the process grows), plus file-backed resident pages (mostly the code) beyond
/// [`file_allowance`]: so the kernel's peak RSS, what cgroups and the OOM killer count, stays
/// within the budget plus that allowance. Without `/proc`, jemalloc's allocated bytes.
fn in_use(s: &Sample, budget: u64) -> u64 {
    if s.rss_anon > 0 {
        let file = s.rss.saturating_sub(s.rss_anon);
        let allowance = file_allowance(budget);
        s.rss_anon.saturating_sub(s.resident.saturating_sub(s.allocated)) + file.saturating_sub(allowance)
    } else {
        s.allocated
    }
}

/// What the kernel counts against the budget: anonymous resident memory, jemalloc's free pages
/// included, plus file-backed resident pages beyond [`file_allowance`].
fn kernel_count(s: &Sample, budget: u64) -> u64 {
    s.rss_anon + s.rss.saturating_sub(s.rss_anon).saturating_sub(file_allowance(budget))
}

/// The sampling interval after sample `s`: a fifth of the configured one while the kernel counts
/// more than half the budget, so bursts of allocation near the limit are seen (and jemalloc's
/// free pages purged) within a few milliseconds. A sample costs ~20µs.
fn next_interval(s: &Sample, config: &GovernorConfig) -> std::time::Duration {
    if kernel_count(s, config.budget) > config.budget / 2 {
        config.sample_interval / 5
    } else {
        config.sample_interval
    }
}

fn sampler_loop(weak: Weak<Shared>) {
    // `Governor::new` took the first sample; sleep first, then sample.
    let mut interval = match weak.upgrade() {
        Some(shared) => shared.config.sample_interval,
        None => return,
    };
    loop {
        std::thread::sleep(interval);
        match weak.upgrade() {
            Some(shared) => {
                let s = sample_once(&shared);
                interval = next_interval(&s, &shared.config);
                // Another process may have given back what the queue's front waits for.
                if shared.waits_on_machine() {
                    shared.wake();
                }
            }
            None => return,
        }
    }
}
