//! [`LeasePool`]: a DataFusion [`MemoryPool`] that keeps one step's operators inside its lease.
//!
//! # Design
//!
//! DataFusion's pool API is synchronous (`try_grow`) and its accounting is voluntary; an `Err`
//! from `try_grow` is how a spillable operator (sort, aggregate) learns it must spill, and how an
//! unspillable one (hash join build side) fails. The pool divides the lease like this:
//!
//! ```text
//!   ┌──────────────────────────── lease (e.g. 256MiB) ─────────────────────────────┐
//!   │  unspillable reserve (20%)  │      spillable area, split among ACTIVE         │
//!   │  kept for consumers that    │      spillable consumers (size > 0)             │
//!   │  cannot spill; they may     │      ┌──────────┬──────────┐                    │
//!   │  also use any free byte     │      │ Sort[0]  │ Agg[1]   │  each <= area / n   │
//!   └─────────────────────────────┴──────┴──────────┴──────────┴────────────────────┘
//! ```
//!
//! * **Fair among active consumers.** DataFusion's `FairSpillPool` divides by every registered
//!   spillable consumer, so idle ones starve the one doing the work; here only consumers that
//!   hold memory (plus the one asking) count. A consumer within its share may grow while the
//!   lease has room (borrowing from the reserve if others overran their shares before it became
//!   active); a consumer past its share is refused and spills.
//! * **Pressure.** At [`Pressure::Moderate`] or above, a spillable consumer may not grow past a
//!   small floor (1/8 of its share): it spills early, before real memory runs out.
//! * **Real memory.** The sampler compares anonymous resident memory with what consumers reserve;
//!   when the untracked part outgrows the budget's headroom, every pool's usable limit shrinks by
//!   the excess (never below a quarter of the lease), so reserved + untracked stays in budget.
//! * **Errors name who.** When an unspillable consumer cannot fit, the error names the step, the
//!   consumer, the numbers and the largest holders, as a DataFusion "Resources exhausted" error.
//!
//! The pool owns its [`Lease`]: the bytes go back to the governor when the last `Arc` of the pool
//! (held by the DataFusion session and its operators) is dropped.
//!
//! **Elastic leases.** A long-lived holder (`views serve`, the shell) sets
//! [`PoolOptions::grow_to`]: its lease starts small and follows what is reserved, growing in
//! [`GROW_STEP`]s when a reservation needs more and giving back what is freed beyond two steps,
//! so other processes get their leases beside it. Growth the governor or the machine-wide ledger
//! cannot grant now, below the ceiling, is **waited for** by a consumer that cannot spill (a
//! view's changes in flight and state, a join's build side): it stalls, asking again with a
//! growing pause (up to 200ms), until the machine lends it or the governor's lease timeout
//! passes, as a lease request waits; then it is refused, saying how long it waited. A spillable
//! consumer is refused at once (it spills instead), and so is growth past the ceiling (waiting
//! cannot make the process's own budget larger).

use crate::lease::{Lease, Shared};
use crate::pressure::Pressure;
use crate::size::fmt_bytes;
use datafusion_common::{DataFusionError, Result};
use datafusion_execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The share of each lease kept for consumers that cannot spill, unless configured.
pub const DEFAULT_UNSPILLABLE_RESERVE: f64 = 0.2;

/// How a lease is divided inside its pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// The step's name, used in errors (defaults to the lease name).
    pub step: Option<String>,
    /// Share of the lease kept for unspillable consumers (default 0.2).
    pub unspillable_reserve: f64,
    /// Whether to refuse spillable growth under memory pressure (default true).
    pub pressure_aware: bool,
    /// An elastic lease: grows up to this many bytes as reservations need, and shrinks as they
    /// free (`None`: the lease is what it was granted, for its life).
    pub grow_to: Option<u64>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self { step: None, unspillable_reserve: DEFAULT_UNSPILLABLE_RESERVE, pressure_aware: true, grow_to: None }
    }
}

/// How much an elastic lease grows at a time, and keeps free beyond what is reserved.
pub const GROW_STEP: usize = 16 << 20;

/// A spillable consumer may always hold this much, even when the lease is full: it is what an
/// operator keeps after spilling everything else (the lease can be overdrawn by this much per
/// spillable consumer).
pub const SPILLED_FLOOR: usize = 64 << 10;

/// Counters of a [`LeasePool`], for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Bytes currently reserved.
    pub reserved: u64,
    /// Highest total reservation seen.
    pub peak_reserved: u64,
    /// `try_grow` calls refused (each makes a spillable consumer spill or an unspillable one fail).
    pub denials: u64,
    /// Of those, refused because of memory pressure rather than the lease's size.
    pub pressure_denials: u64,
    /// Times a consumer that cannot spill waited for the machine to lend an elastic lease more.
    pub stalls: u64,
}

/// A DataFusion memory pool bounded by one lease. See the [module docs](self).
pub struct LeasePool {
    lease: Mutex<Lease>,
    shared: Arc<Shared>,
    step: String,
    /// The lease's bytes now (an elastic lease's change).
    limit: AtomicUsize,
    /// What an elastic lease may grow to (a fixed one: its size).
    max: usize,
    elastic: bool,
    reserve_share: f64,
    pressure_aware: bool,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    spillable: usize,
    unspillable: usize,
    consumers: HashMap<usize, Consumer>,
    stats: PoolStats,
    /// The last consumer that cannot spill and was refused.
    refused_unspillable: Option<String>,
}

struct Consumer {
    name: String,
    can_spill: bool,
    size: usize,
}

impl Lease {
    /// Turns the lease into a DataFusion memory pool that owns it.
    pub fn into_pool(self, options: PoolOptions) -> Arc<LeasePool> {
        let limit = self.bytes() as usize;
        let max = options.grow_to.map_or(limit, |m| (m as usize).max(limit));
        Arc::new(LeasePool {
            step: options.step.unwrap_or_else(|| self.name().to_string()),
            limit: AtomicUsize::new(limit),
            max,
            elastic: options.grow_to.is_some(),
            reserve_share: options.unspillable_reserve.clamp(0.0, 1.0),
            pressure_aware: options.pressure_aware,
            state: Mutex::new(PoolState::default()),
            shared: self.shared.clone(),
            lease: Mutex::new(self),
        })
    }
}

impl LeasePool {
    /// The bytes the lease holds now (an elastic lease's change as it grows and shrinks).
    pub fn lease_bytes(&self) -> u64 {
        self.limit.load(Ordering::Relaxed) as u64
    }

    /// The most the lease can hold: an elastic lease's ceiling, a fixed lease's size.
    pub fn max_bytes(&self) -> u64 {
        self.max as u64
    }

    /// An elastic lease grows (without waiting: see `wait_for_machine`) so that `needed` bytes
    /// fit, by whole steps and up to its ceiling; whether they fit now. It also covers the
    /// untracked memory beyond the headroom (a fixed lease gives up a share of itself for it
    /// instead): that memory is this process's, and the machine must not lend it to another.
    fn grow_lease(&self, needed: usize) -> bool {
        if !self.elastic {
            return needed <= self.limit.load(Ordering::Relaxed);
        }
        let needed = needed.saturating_add(self.shared().squeeze_bytes.load(Ordering::Relaxed) as usize);
        let limit = self.limit.load(Ordering::Relaxed);
        if needed <= limit {
            return true;
        }
        // Toward what is needed, by whole steps, up to the ceiling (part of the way when the
        // ceiling is below it: the rules of `try_grow` then decide against the lease as it is).
        let want = needed.div_ceil(GROW_STEP).saturating_mul(GROW_STEP).min(self.max);
        if want <= limit {
            return false;
        }
        let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if lease.try_grow((want - limit) as u64) {
            self.limit.store(want, Ordering::Relaxed);
            return needed <= want;
        }
        false
    }

    /// For a consumer that cannot spill, of an elastic lease: while `additional` more would fit
    /// the ceiling but the machine cannot lend it now, waits for it (see the module docs), up to
    /// the governor's lease timeout. `Some(waited)` when it waited and the machine still could
    /// not lend it.
    fn wait_for_machine(&self, reservation: &MemoryReservation, additional: usize) -> Option<Duration> {
        let start = Instant::now();
        let timeout = self.shared().config.lease_timeout;
        let mut pause = Duration::from_millis(5);
        let mut waiting = false;
        loop {
            let needed = self.reserved() + additional;
            let squeeze = self.shared().squeeze_bytes.load(Ordering::Relaxed) as usize;
            if needed.saturating_add(squeeze) > self.max || self.grow_lease(needed) {
                if waiting {
                    tracing::info!(step = %self.step, consumer = %reservation.consumer().name(),
                        waited_ms = start.elapsed().as_millis() as u64, "the machine lent the memory waited for");
                }
                return None;
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Some(start.elapsed());
            }
            if !waiting {
                waiting = true;
                self.lock().stats.stalls += 1;
                tracing::warn!(step = %self.step, consumer = %reservation.consumer().name(),
                    bytes = %fmt_bytes(additional), lease = %fmt_bytes(self.limit.load(Ordering::Relaxed)),
                    up_to = %fmt_bytes(self.max),
                    "waiting for the machine: other processes hold the memory this lease would grow into");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// An elastic lease gives back what is free beyond two steps (keeping one).
    fn shrink_lease(&self, used: usize) {
        if !self.elastic {
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let excess = self.shared().squeeze_bytes.load(Ordering::Relaxed) as usize;
        let keep = (used + excess + GROW_STEP).div_ceil(GROW_STEP) * GROW_STEP;
        if limit > keep + GROW_STEP {
            let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
            lease.shrink((limit - keep) as u64);
            self.limit.store(keep, Ordering::Relaxed);
        }
    }

    /// The unspillable reserve of the lease as it is now.
    fn reserve(&self) -> usize {
        (self.limit.load(Ordering::Relaxed) as f64 * self.reserve_share) as usize
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    /// Starts a new peak: `peak_reserved` becomes what is reserved now (a shell measures each
    /// statement on one pool).
    pub fn reset_peak(&self) {
        let mut state = self.lock();
        state.stats.peak_reserved = state.stats.reserved;
    }

    /// The name of the last consumer that cannot spill and was refused memory (what made the
    /// step fail with `ResourcesExhausted`, e.g. `TopK[0]` or `HashJoinInput`), if any: what a
    /// retry's plan must avoid.
    pub fn refused_unspillable(&self) -> Option<String> {
        self.lock().refused_unspillable.clone()
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The lease less its share of the squeeze (untracked memory beyond the headroom), but never
    /// below a quarter of the lease: below that nothing could run, and pressure levels take over.
    fn effective_limit(&self) -> usize {
        let limit = self.limit.load(Ordering::Relaxed);
        if self.elastic {
            // The lease covers the untracked excess as well (`grow_lease`): less that, never
            // below a quarter of it.
            let excess = self.shared().squeeze_bytes.load(Ordering::Relaxed) as usize;
            return limit.saturating_sub(excess).max(limit / 4);
        }
        let ppm = self.shared().squeeze_ppm.load(Ordering::Relaxed).min(750_000) as u128;
        (self.limit.load(Ordering::Relaxed) as u128 * (1_000_000 - ppm) / 1_000_000) as usize
    }

    fn add(&self, state: &mut PoolState, r: &MemoryReservation, n: usize) {
        if r.consumer().can_spill() {
            state.spillable += n;
        } else {
            state.unspillable += n;
        }
        if let Some(c) = state.consumers.get_mut(&r.consumer().id()) {
            c.size += n;
        }
        let total = (state.spillable + state.unspillable) as u64;
        state.stats.reserved = total;
        state.stats.peak_reserved = state.stats.peak_reserved.max(total);
        self.shared().reserved.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn deny(&self, state: &mut PoolState, r: &MemoryReservation, additional: usize, why: &str) -> DataFusionError {
        state.stats.denials += 1;
        if !r.consumer().can_spill() {
            state.refused_unspillable = Some(r.consumer().name().to_string());
        }
        let kind = if r.consumer().can_spill() { "spillable" } else { "cannot spill" };
        let mut top: Vec<&Consumer> = state.consumers.values().filter(|c| c.size > 0).collect();
        top.sort_by_key(|c| std::cmp::Reverse(c.size));
        let top = top
            .iter()
            .take(5)
            .map(|c| format!("{}{} {}", c.name, if c.can_spill { "" } else { "*" }, fmt_bytes(c.size)))
            .collect::<Vec<_>>()
            .join(", ");
        let lease_now = self.limit.load(Ordering::Relaxed);
        let elastic = match (self.elastic, lease_now < self.max) {
            (true, true) => format!(" (elastic, up to {}: the machine could not lend more now)", fmt_bytes(self.max)),
            (true, false) => format!(" (elastic, grown to its ceiling, {})", fmt_bytes(self.max)),
            (false, _) => String::new(),
        };
        let limit = self.effective_limit();
        let squeezed = if limit < lease_now {
            format!(" (usable now {}: untracked memory outgrew the headroom)", fmt_bytes(limit))
        } else {
            String::new()
        };
        DataFusionError::ResourcesExhausted(format!(
            "step {step:?}: {consumer} ({kind}) asked for {add} more while holding {held}: {why}. \
             Lease {lease}{elastic}{squeezed}: {used} reserved (spillable {sp}, unspillable {un}), pressure {pressure}. \
             Largest consumers (* = cannot spill): {top}",
            step = self.step,
            consumer = r.consumer().name(),
            add = fmt_bytes(additional),
            held = fmt_bytes(r.size()),
            lease = fmt_bytes(lease_now),
            used = fmt_bytes(state.spillable + state.unspillable),
            sp = fmt_bytes(state.spillable),
            un = fmt_bytes(state.unspillable),
            pressure = self.shared().pressure(),
        ))
    }
}

impl std::fmt::Debug for LeasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasePool")
            .field("step", &self.step)
            .field("limit", &self.limit)
            .field("max", &self.max)
            .finish()
    }
}

impl std::fmt::Display for LeasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spillway lease pool of step {:?} ({})", self.step, fmt_bytes(self.lease_bytes() as usize))
    }
}

impl MemoryPool for LeasePool {
    fn name(&self) -> &str {
        "spillway-lease"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.lock().consumers.insert(
            consumer.id(),
            Consumer { name: consumer.name().to_string(), can_spill: consumer.can_spill(), size: 0 },
        );
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.lock().consumers.remove(&consumer.id());
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        let mut state = self.lock();
        // Infallible: counted whatever happens, and covered by the lease when it can grow.
        self.grow_lease(state.spillable + state.unspillable + additional);
        self.add(&mut state, reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let mut state = self.lock();
        if reservation.consumer().can_spill() {
            state.spillable = state.spillable.saturating_sub(shrink);
        } else {
            state.unspillable = state.unspillable.saturating_sub(shrink);
        }
        if let Some(c) = state.consumers.get_mut(&reservation.consumer().id()) {
            c.size = c.size.saturating_sub(shrink);
        }
        state.stats.reserved = (state.spillable + state.unspillable) as u64;
        self.shared().reserved.fetch_sub(shrink as u64, Ordering::Relaxed);
        self.shrink_lease(state.spillable + state.unspillable);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if additional == 0 {
            // Nothing more is asked for: refusing it (when others overran the lease) would fail
            // an operator for memory it does not take.
            return Ok(());
        }
        // A consumer that cannot spill, of an elastic lease, waits for what the machine cannot
        // lend now (a spillable one is refused and spills).
        let waited = match self.elastic && !reservation.consumer().can_spill() {
            true => self.wait_for_machine(reservation, additional),
            false => None,
        };
        let mut state = self.lock();
        let new_size = reservation.size() + additional;
        // An elastic lease first grows to cover the request (if the machine lends it now);
        // the rules below then hold against the lease as it is.
        self.grow_lease(state.spillable + state.unspillable + additional);
        let limit = self.effective_limit();
        // RepartitionExec's reservations stand for batches in flight between partitions (a few
        // per partition pair). Refusing them makes it spill those batches to its spill pool,
        // which in DataFusion 55 can deadlock (every worker parks: apache/datafusion#24883; TPC-H
        // Q7 at SF10 under 1GiB hung here). They are always granted and counted, so the other
        // consumers of the lease make room for them.
        if reservation.consumer().name().starts_with("RepartitionExec") {
            self.add(&mut state, reservation, additional);
            return Ok(());
        }
        if reservation.consumer().can_spill() && new_size <= SPILLED_FLOOR {
            // What an operator keeps after spilling (DataFusion's aggregate resizes to its empty
            // table and fails outright if refused): a bounded overdraft, never a failure.
            self.add(&mut state, reservation, additional);
            return Ok(());
        }
        if reservation.consumer().can_spill() {
            let spill_available = limit.saturating_sub(state.unspillable.max(self.reserve()));
            let me = reservation.consumer().id();
            let others_active =
                state.consumers.iter().filter(|(id, c)| **id != me && c.can_spill && c.size > 0).count();
            let share = spill_available / (others_active + 1);
            // A consumer that holds nothing has nothing to spill: refusing it can only fail it
            // (DataFusion's aggregates then error out). Its first allocation is granted if the
            // lease has room, whatever its share; or, when the others fill the lease, if it is
            // within its fair share: they are then past theirs, are refused at their next growth
            // and spill (a bounded overdraft, as `SPILLED_FLOOR` is; DataFusion's
            // `aggregate_memory_spill.slt` in a 4MiB lease failed here).
            let fits = state.spillable + state.unspillable + additional <= limit;
            let first = reservation.size() == 0 && (fits || new_size <= share);
            // Within its fair share a consumer may grow as long as the lease has room, even into
            // the unspillable reserve: if the spillable area is full, it is because others grew
            // past their shares before this one became active, and they are refused (and spill)
            // at their next growth. Past its share a consumer is refused and spills.
            if new_size > share && !first {
                let why = format!(
                    "its fair share is {} ({} active spillable consumer(s))",
                    fmt_bytes(share),
                    others_active + 1
                );
                return Err(self.deny(&mut state, reservation, additional, &why));
            }
            if !fits && !first {
                let why = "the lease is full".to_string();
                return Err(self.deny(&mut state, reservation, additional, &why));
            }
            let pressure = self.shared().pressure();
            // A consumer that holds nothing has nothing to spill: let it make progress.
            let holds = reservation.size() > 0;
            if self.pressure_aware && pressure >= Pressure::Moderate && holds && new_size > share / 8 {
                state.stats.pressure_denials += 1;
                let why = format!("memory pressure is {pressure}, spill early");
                return Err(self.deny(&mut state, reservation, additional, &why));
            }
        } else if state.spillable + state.unspillable + additional > limit {
            let why = match waited {
                Some(w) => format!(
                    "the machine could not lend it in {:.1}s of waiting (the governor's lease timeout): other \
                     processes hold it",
                    w.as_secs_f64()
                ),
                None => "the lease is full; give the step a larger lease (--memory, or profile M/L)".to_string(),
            };
            return Err(self.deny(&mut state, reservation, additional, &why));
        }
        self.add(&mut state, reservation, additional);
        Ok(())
    }

    fn reserved(&self) -> usize {
        let state = self.lock();
        state.spillable + state.unspillable
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.max)
    }
}

impl Drop for LeasePool {
    fn drop(&mut self) {
        // Anything still reserved is returned to the governor's gauge with the pool.
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let left = (state.spillable + state.unspillable) as u64;
        self.shared.reserved.fetch_sub(left, Ordering::Relaxed);
    }
}
