//! Leases: byte loans from the budget to a step, granted in strict FIFO order.
//!
//! ```text
//!   lease("orders", 3GiB) ──▶ ┌──────────── queue (FIFO) ────────────┐
//!                             │ [orders 3GiB] [tiny 10MiB] ...        │──▶ granted when it fits
//!                             └───────────────────────────────────────┘    and pressure < high
//!   budget ─ headroom = leasable ─── leased: Σ holders ── free
//! ```
//!
//! A request is granted only when everything ahead of it has been, so a large request is never
//! starved by a stream of small ones. Waiting can be cancelled (drop the future) and times out
//! with an error that names who holds the memory. Dropping a [`Lease`] returns its bytes, wakes
//! the queue and purges jemalloc arenas so resident memory goes back to the OS.

use crate::config::{GovernorConfig, Profile};
use crate::error::{Error, Result};
use crate::jemalloc;
use crate::ledger::{Claim, Ledger};
use crate::pressure::Pressure;
use crate::size::fmt_bytes;
use crate::timeline::Timeline;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// How many bytes a lease asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeaseSize {
    /// An exact number of bytes.
    Bytes(u64),
    /// A named profile, resolved against the budget.
    Profile(Profile),
}

/// A request for a lease: who asks, how much, and whether it needs the heavy slot.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The owner, used in errors and reports (e.g. the model name).
    pub name: String,
    /// Size of the loan.
    pub size: LeaseSize,
    /// Whether to hold a heavy slot for the lease's lifetime.
    pub heavy: bool,
    /// Overrides the governor's lease timeout.
    pub timeout: Option<Duration>,
}

impl LeaseRequest {
    /// A light lease of `size` named `name`.
    pub fn new(name: impl Into<String>, size: LeaseSize) -> Self {
        Self { name: name.into(), size, heavy: false, timeout: None }
    }
    /// A light lease of exactly `bytes`.
    pub fn bytes(name: impl Into<String>, bytes: u64) -> Self {
        Self::new(name, LeaseSize::Bytes(bytes))
    }
    /// Marks the lease heavy: it waits for, and holds, a heavy slot.
    pub fn heavy(mut self) -> Self {
        self.heavy = true;
        self
    }
    /// Sets how long this request may wait.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// How long a lease waits on other processes before the wait is reported.
const MACHINE_WAIT_NOTICE: Duration = Duration::from_secs(2);

pub(crate) struct Shared {
    pub(crate) config: GovernorConfig,
    pub(crate) leasable: u64,
    state: Mutex<State>,
    heavy: Arc<Semaphore>,
    pub(crate) pressure: AtomicU8,
    pub(crate) pressure_tx: watch::Sender<Pressure>,
    /// Bytes DataFusion consumers hold inside all lease pools.
    pub(crate) reserved: AtomicU64,
    /// Share of each lease withheld (parts per million) while untracked memory exceeds the headroom.
    pub(crate) squeeze_ppm: AtomicU64,
    /// The untracked memory beyond the headroom, bytes (what `squeeze_ppm` is a share of).
    pub(crate) squeeze_bytes: AtomicU64,
    pub(crate) timeline: Timeline,
    /// The machine-wide ledger every spillway process leases from, if one is configured.
    pub(crate) ledger: Option<Ledger>,
}

#[derive(Default)]
struct State {
    leased: u64,
    next_id: u64,
    queue: VecDeque<Waiter>,
    holders: BTreeMap<u64, Holder>,
}

struct Waiter {
    id: u64,
    name: String,
    bytes: u64,
    tx: oneshot::Sender<()>,
}

struct Holder {
    name: String,
    bytes: u64,
}

impl Shared {
    pub(crate) fn new(config: GovernorConfig) -> Self {
        let (pressure_tx, _) = watch::channel(Pressure::Normal);
        Self {
            ledger: config.ledger.clone().map(Ledger::new),
            leasable: config.leasable(),
            heavy: Arc::new(Semaphore::new(config.heavy_slots)),
            config,
            state: Mutex::new(State::default()),
            pressure: AtomicU8::new(Pressure::Normal as u8),
            pressure_tx,
            reserved: AtomicU64::new(0),
            squeeze_ppm: AtomicU64::new(0),
            squeeze_bytes: AtomicU64::new(0),
            timeline: Timeline::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters half-updated (each update is
        // one statement), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn pressure(&self) -> Pressure {
        Pressure::from_u8(self.pressure.load(Ordering::Relaxed))
    }

    pub(crate) fn leased(&self) -> u64 {
        self.lock().leased
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether a request of `bytes` may be granted now, given what is lent.
    fn fits(&self, state: &State, bytes: u64) -> bool {
        // At high pressure new leases wait, unless nothing is lent at all (then waiting could not
        // make pressure fall, and someone must make progress).
        let pressure_ok = self.pressure() < Pressure::High || state.leased == 0;
        if !(pressure_ok && state.leased + bytes <= self.leasable) {
            return false;
        }
        // Then the machine: our entry in the ledger grows to what we would lend (callers lend
        // `bytes` when this returns true).
        match &self.ledger {
            Some(ledger) if bytes > 0 => matches!(ledger.claim(state.leased + bytes), Claim::Granted),
            _ => true,
        }
    }

    /// Brings our ledger entry down to what is lent after a release.
    fn sync_ledger(&self, state: &State) {
        if let Some(ledger) = &self.ledger {
            ledger.claim(state.leased);
        }
    }

    /// Whether requests are waiting and a ledger is in use (the sampler then looks again).
    pub(crate) fn waits_on_machine(&self) -> bool {
        self.ledger.is_some() && !self.lock().queue.is_empty()
    }

    /// Grants queued requests from the front while they fit.
    fn grant_waiters(&self, state: &mut State) {
        while let Some(front) = state.queue.front() {
            if !self.fits(state, front.bytes) {
                break;
            }
            let w = state.queue.pop_front().expect("front exists");
            state.leased += w.bytes;
            state.holders.insert(w.id, Holder { name: w.name, bytes: w.bytes });
            // If the receiver is gone its guard releases the grant (see `WaitGuard::drop`).
            let _ = w.tx.send(());
        }
    }

    pub(crate) fn wake(&self) {
        let mut state = self.lock();
        self.grant_waiters(&mut state);
    }

    /// Grants `bytes` at once if they fit and nobody is waiting (never queues).
    pub(crate) fn try_acquire_now(self: &Arc<Self>, name: &str, bytes: u64) -> Option<Lease> {
        let mut state = self.lock();
        if !state.queue.is_empty() || !self.fits(&state, bytes) {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.leased += bytes;
        state.holders.insert(id, Holder { name: name.to_string(), bytes });
        drop(state);
        Some(self.lease(id, name.to_string(), bytes, None))
    }

    fn try_grow(&self, id: u64, bytes: u64) -> bool {
        let mut state = self.lock();
        if !state.queue.is_empty() || !self.fits(&state, bytes) {
            return false;
        }
        match state.holders.get_mut(&id) {
            Some(h) => h.bytes += bytes,
            None => {
                // `fits` claimed the bytes in the ledger: give them back.
                self.sync_ledger(&state);
                return false;
            }
        }
        state.leased += bytes;
        true
    }

    fn shrink(&self, id: u64, bytes: u64) {
        let mut state = self.lock();
        if let Some(h) = state.holders.get_mut(&id) {
            let n = bytes.min(h.bytes);
            h.bytes -= n;
            state.leased -= n;
        }
        self.sync_ledger(&state);
        self.grant_waiters(&mut state);
    }

    fn release(&self, id: u64) {
        let mut state = self.lock();
        if let Some(h) = state.holders.remove(&id) {
            state.leased -= h.bytes;
        }
        self.sync_ledger(&state);
        self.grant_waiters(&mut state);
    }

    fn holders_desc(&self, state: &State) -> String {
        let mut hs: Vec<&Holder> = state.holders.values().collect();
        hs.sort_by_key(|h| std::cmp::Reverse(h.bytes));
        let mut parts: Vec<String> =
            hs.iter().take(8).map(|h| format!("{} ({})", h.name, fmt_bytes(h.bytes))).collect();
        if let Some(ledger) = &self.ledger {
            parts.extend(ledger.others().iter().map(|o| format!("pid {} {} ({})", o.pid, o.label, fmt_bytes(o.bytes))));
        }
        if parts.is_empty() {
            return "nobody (waiting on memory pressure)".into();
        }
        parts.join(", ")
    }

    pub(crate) fn resolve(&self, size: LeaseSize) -> u64 {
        match size {
            LeaseSize::Bytes(b) => b,
            LeaseSize::Profile(p) => self.config.profile_bytes(p),
        }
    }

    pub(crate) async fn acquire(self: &Arc<Self>, req: LeaseRequest) -> Result<Lease> {
        let bytes = self.resolve(req.size);
        if bytes > self.leasable {
            return Err(Error::LeaseTooLarge {
                name: req.name,
                requested: fmt_bytes(bytes),
                leasable: fmt_bytes(self.leasable),
                budget: fmt_bytes(self.config.budget),
            });
        }
        if let Some(ledger) = self.ledger.as_ref().filter(|l| bytes > l.capacity() && !l.is_broken()) {
            return Err(Error::LeaseAboveMachine {
                name: req.name,
                requested: fmt_bytes(bytes),
                capacity: fmt_bytes(ledger.capacity()),
                ledger: ledger.path().display().to_string(),
            });
        }
        let started = Instant::now();
        let timeout = req.timeout.or(self.config.lease_timeout);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);

        let heavy = if req.heavy {
            let acquire = self.heavy.clone().acquire_owned();
            let permit = match deadline {
                Some(d) => match tokio::time::timeout_at(d, acquire).await {
                    Ok(p) => p,
                    Err(_) => return Err(self.timeout_error(&req.name, bytes, started, 0)),
                },
                None => acquire.await,
            };
            Some(permit.map_err(|_| Error::Closed(req.name.clone()))?)
        } else {
            None
        };

        let (id, rx) = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            if state.queue.is_empty() && self.fits(&state, bytes) {
                state.leased += bytes;
                state.holders.insert(id, Holder { name: req.name.clone(), bytes });
                drop(state);
                return Ok(self.lease(id, req.name, bytes, heavy));
            }
            let (tx, rx) = oneshot::channel();
            state.queue.push_back(Waiter { id, name: req.name.clone(), bytes, tx });
            (id, rx)
        };
        tracing::debug!(lease = %req.name, bytes, "lease waits in the queue");

        let mut guard = WaitGuard { shared: self, id, armed: true };
        let mut rx = rx;
        let wait = async {
            // Waiting on other spillway processes is said once, naming them: the user sees why
            // nothing happens (e.g. a `spillway sql` started beside a long `views serve`).
            if self.ledger.is_some() {
                tokio::select! {
                    r = &mut rx => return r,
                    _ = tokio::time::sleep(MACHINE_WAIT_NOTICE) => self.tell_machine_wait(&req.name, bytes),
                }
            }
            (&mut rx).await
        };
        let outcome = match deadline {
            Some(d) => tokio::time::timeout_at(d, wait).await.ok(),
            None => Some(wait.await),
        };
        match outcome {
            Some(Ok(())) => {
                guard.armed = false;
                Ok(self.lease(id, req.name, bytes, heavy))
            }
            Some(Err(_)) => Err(Error::Closed(req.name)),
            None => {
                let ahead = {
                    let state = self.lock();
                    state.queue.iter().take_while(|w| w.id != id).count()
                };
                Err(self.timeout_error(&req.name, bytes, started, ahead))
            }
        }
    }

    /// Warns that `name` waits because other processes hold the machine's budget (if they do).
    fn tell_machine_wait(&self, name: &str, bytes: u64) {
        let Some(ledger) = &self.ledger else { return };
        let others = ledger.others();
        let held: u64 = others.iter().map(|o| o.bytes).sum();
        if held == 0 {
            return;
        }
        let who: Vec<String> =
            others.iter().map(|o| format!("pid {} {} ({})", o.pid, o.label, fmt_bytes(o.bytes))).collect();
        tracing::warn!(
            "lease {name:?} for {} waits for the machine: other spillway processes hold {} of its {}: {}",
            fmt_bytes(bytes),
            fmt_bytes(held),
            fmt_bytes(ledger.capacity()),
            who.join(", ")
        );
    }

    fn timeout_error(&self, name: &str, bytes: u64, started: Instant, ahead: usize) -> Error {
        let state = self.lock();
        Error::LeaseTimeout {
            name: name.to_string(),
            requested: fmt_bytes(bytes),
            waited: started.elapsed(),
            leased: fmt_bytes(state.leased),
            leasable: fmt_bytes(self.leasable),
            pressure: self.pressure().to_string(),
            holders: self.holders_desc(&state),
            ahead,
        }
    }

    fn lease(self: &Arc<Self>, id: u64, name: String, bytes: u64, heavy: Option<OwnedSemaphorePermit>) -> Lease {
        Lease { shared: Arc::clone(self), id, name, bytes, _heavy: heavy, granted: Instant::now() }
    }
}

/// Removes a cancelled or timed-out request from the queue, or returns its grant if one arrived
/// in the meantime.
struct WaitGuard<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.shared.lock();
        if let Some(pos) = state.queue.iter().position(|w| w.id == self.id) {
            state.queue.remove(pos);
        } else if let Some(h) = state.holders.remove(&self.id) {
            state.leased -= h.bytes;
            self.shared.sync_ledger(&state);
        }
        // Whoever stood behind us may fit now.
        self.shared.grant_waiters(&mut state);
    }
}

/// A loan of bytes from the budget. Dropping it gives them back (RAII).
///
/// Turn it into a DataFusion memory pool with [`Lease::into_pool`]; the pool then owns the lease.
pub struct Lease {
    pub(crate) shared: Arc<Shared>,
    id: u64,
    name: String,
    bytes: u64,
    _heavy: Option<OwnedSemaphorePermit>,
    granted: Instant,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("bytes", &self.bytes)
            .field("heavy", &self._heavy.is_some())
            .finish()
    }
}

impl Lease {
    /// The owner's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Bytes lent.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Whether this lease holds a heavy slot.
    pub fn is_heavy(&self) -> bool {
        self._heavy.is_some()
    }
    /// How long the lease has been held.
    pub fn held_for(&self) -> Duration {
        self.granted.elapsed()
    }

    /// Borrows `bytes` more if they fit right now and nobody is queued (never waits). For
    /// holders whose size grows with their data, such as in-memory intermediates.
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        let ok = self.shared.try_grow(self.id, bytes);
        if ok {
            self.bytes += bytes;
        }
        ok
    }

    /// Returns `bytes` of the lease early (waking the queue); the rest stays lent.
    pub fn shrink(&mut self, bytes: u64) {
        let n = bytes.min(self.bytes);
        self.shared.shrink(self.id, n);
        self.bytes -= n;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.release(self.id);
        // Small leases do not move resident memory; skip the purge to keep them cheap.
        if self.shared.config.purge_on_release && self.bytes >= (1 << 20) {
            jemalloc::purge_all_arenas();
        }
    }
}
