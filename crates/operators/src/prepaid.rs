//! [`PrepaidPool`]: memory reserved by the grace join, handed to the DataFusion join it starts.
//!
//! The grace join decides that a build side fits by reserving what DataFusion's hash join will
//! need for it (its spillable consumer, within its fair share). If it then released that and
//! let the hash join reserve again, another operator could take the bytes in between and the
//! hash join would fail after all. Instead the hash join runs with this pool as its memory pool:
//! its reservations are drawn from the grace join's reservation first, and only what goes
//! beyond is asked of the lease (through the same reservation, so the lease sees one consumer).
//! Only the pieces the grace join builds (whose children are [`crate::OnceExec`]s) run under it.

use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use std::sync::{Arc, Mutex};

/// See the module docs.
pub(crate) struct PrepaidPool {
    held: Mutex<Held>,
    limit: MemoryLimit,
}

impl std::fmt::Debug for MemoryLimitDebug<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            MemoryLimit::Finite(n) => write!(f, "{n}"),
            MemoryLimit::Infinite => write!(f, "infinite"),
            MemoryLimit::Unknown => write!(f, "unknown"),
        }
    }
}
struct MemoryLimitDebug<'a>(&'a MemoryLimit);

struct Held {
    /// Reserved in the lease; never shrinks while the pool lives (it is dropped with it).
    reservation: MemoryReservation,
    /// Of that, what the pool's consumers hold.
    used: usize,
}

impl PrepaidPool {
    /// A task context like `task` whose memory pool is `reservation`. The bytes move to a
    /// consumer that cannot spill (named after the reservation's, `... (in memory)`): the build
    /// side is committed to memory now, and must not count as a spillable consumer in the lease's
    /// fair shares (or every join that fitted would shrink the share of the next one).
    pub fn task(task: &Arc<TaskContext>, reservation: MemoryReservation) -> Result<Arc<TaskContext>> {
        let limit = task.memory_pool().memory_limit();
        let pinned =
            MemoryConsumer::new(format!("{} (in memory)", reservation.consumer().name())).register(task.memory_pool());
        let bytes = reservation.size();
        drop(reservation);
        // The same bytes, just released: granted even if another consumer took them meanwhile.
        if pinned.try_grow(bytes).is_err() {
            pinned.grow(bytes);
        }
        let reservation = pinned;
        let pool: Arc<dyn MemoryPool> =
            Arc::new(PrepaidPool { held: Mutex::new(Held { reservation, used: 0 }), limit });
        let runtime = RuntimeEnvBuilder::from_runtime_env(&task.runtime_env()).with_memory_pool(pool).build_arc()?;
        Ok(Arc::new(TaskContext::new(
            task.task_id(),
            task.session_id(),
            task.session_config().clone(),
            task.scalar_functions().clone(),
            task.higher_order_functions().clone(),
            task.aggregate_functions().clone(),
            task.window_functions().clone(),
            runtime,
        )))
    }

    fn copy_limit(limit: &MemoryLimit) -> MemoryLimit {
        match limit {
            MemoryLimit::Finite(n) => MemoryLimit::Finite(*n),
            MemoryLimit::Infinite => MemoryLimit::Infinite,
            MemoryLimit::Unknown => MemoryLimit::Unknown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryPool for PrepaidPool {
    fn name(&self) -> &str {
        "spillway-prepaid"
    }

    fn grow(&self, _r: &MemoryReservation, additional: usize) {
        let mut h = self.lock();
        let free = h.reservation.size() - h.used;
        if additional > free {
            h.reservation.grow(additional - free);
        }
        h.used += additional;
    }

    fn shrink(&self, _r: &MemoryReservation, shrink: usize) {
        let mut h = self.lock();
        h.used = h.used.saturating_sub(shrink);
    }

    fn try_grow(&self, _r: &MemoryReservation, additional: usize) -> Result<()> {
        let mut h = self.lock();
        let free = h.reservation.size() - h.used;
        if additional > free {
            let extra = additional - free;
            if let Err(e) = h.reservation.try_grow(extra) {
                // The grace join's estimate can fall a little short of what the hash join
                // reserves (its table rounds up; an empty table still takes a few hundred bytes):
                // a small overdraft is granted, not failed.
                if extra > (h.reservation.size() / 16).max(1 << 20) {
                    return Err(e);
                }
                h.reservation.grow(extra);
            }
        }
        h.used += additional;
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.lock().used
    }

    fn memory_limit(&self) -> MemoryLimit {
        Self::copy_limit(&self.limit)
    }
}

impl std::fmt::Debug for PrepaidPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.lock();
        f.debug_struct("PrepaidPool")
            .field("held", &h.reservation.size())
            .field("used", &h.used)
            .field("limit", &MemoryLimitDebug(&self.limit))
            .finish()
    }
}

impl std::fmt::Display for PrepaidPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.lock();
        write!(f, "memory prepaid by a grace hash join ({} of {} bytes used)", h.used, h.reservation.size())
    }
}
