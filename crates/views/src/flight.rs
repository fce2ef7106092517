//! Bytes in flight while a view absorbs a transaction, reserved before they exist.
//!
//! A change moves through a view's operators in **pieces** of at most [`PIECE_ROWS`] rows: a
//! scan cuts a table's change into pieces, a join builds its output pairs a piece at a time and
//! pushes each up before building the next, and an aggregate or top-n folds every piece into its
//! state and emits only its touched groups at the end. So what a transaction holds at once is a
//! few pieces per operator, not its whole fan-out: a join whose output is 1,000× its input never
//! materializes that output when an aggregate sits above it.
//!
//! Every piece (and each piece's expected state growth) is reserved from the view's memory pool
//! — the lease `views apply`/`serve` hold — before it is built, through a [`Flight`], and given
//! back when it has been consumed. A refusal is [`ViewError::InFlight`]: the transaction stops
//! before the bytes exist.

use crate::error::{Result, ViewError};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use std::sync::{Arc, Mutex};

/// Rows an operator builds at most at once (a piece of a change, a batch of join pairs).
pub(crate) const PIECE_ROWS: usize = 8192;

/// A view's reservation for what is in flight.
pub(crate) struct Flight {
    view: String,
    pool: Arc<dyn MemoryPool>,
    /// Rows of a piece ([`PIECE_ROWS`] unless a test asks for fewer).
    pub(crate) piece_rows: usize,
    reservation: Mutex<MemoryReservation>,
    /// Of the reservation, what stands for state the transaction grew so far (see
    /// [`Flight::grow_state`]).
    growth: Mutex<usize>,
}

impl Flight {
    /// A reservation named after `view` in `pool`.
    pub(crate) fn new(view: &str, pool: &Arc<dyn MemoryPool>) -> Flight {
        let reservation = MemoryConsumer::new(format!("view {view} (changes in flight)")).register(pool);
        Flight {
            view: view.to_string(),
            pool: pool.clone(),
            piece_rows: PIECE_ROWS,
            reservation: Mutex::new(reservation),
            growth: Mutex::new(0),
        }
    }

    /// Reserves `bytes` of state an operator is about to add, until [`Flight::end`]: the
    /// view's state reservation (resized by its host once the transaction is in) takes over.
    pub(crate) fn grow_state(&self, bytes: usize) -> Result<()> {
        std::mem::forget(self.hold(bytes)?);
        *self.growth.lock().unwrap_or_else(|p| p.into_inner()) += bytes;
        Ok(())
    }

    /// The transaction is in: what [`Flight::grow_state`] reserved is given back.
    pub(crate) fn end(&self) {
        let mut g = self.growth.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.reservation.lock().unwrap_or_else(|p| p.into_inner());
        r.shrink((*g).min(r.size()));
        *g = 0;
    }

    /// Reserves `bytes` until the returned [`Held`] is dropped.
    pub(crate) fn hold(&self, bytes: usize) -> Result<Held<'_>> {
        let mut held = Held { flight: self, bytes: 0 };
        held.grow(bytes)?;
        Ok(held)
    }

    /// A reservation of its own on the same pool, under the view's name, for what the caller
    /// keeps of the view's change (given back when dropped).
    pub(crate) fn collector(&self) -> Collector {
        let reservation = self.reservation.lock().unwrap_or_else(|p| p.into_inner()).new_empty();
        Collector { view: self.view.clone(), what: "changes in flight", reservation }
    }

    /// A reservation of its own on the same pool, named after the view and `what` it holds.
    pub(crate) fn collector_of(&self, what: &'static str) -> Collector {
        let reservation = MemoryConsumer::new(format!("view {} ({what})", self.view)).register(&self.pool);
        Collector { view: self.view.clone(), what, reservation }
    }

    /// Bytes reserved now.
    pub(crate) fn bytes(&self) -> usize {
        self.reservation.lock().map(|r| r.size()).unwrap_or(0)
    }
}

/// What the caller of [`crate::View::apply`] keeps of the view's change, reserved.
pub(crate) struct Collector {
    view: String,
    what: &'static str,
    reservation: MemoryReservation,
}

impl Collector {
    /// Reserves `more` bytes as well.
    pub(crate) fn grow(&mut self, more: usize) -> Result<()> {
        if more == 0 {
            return Ok(());
        }
        self.reservation.try_grow(more).map_err(|e| ViewError::InFlight {
            view: self.view.clone(),
            what: self.what,
            bytes: more,
            held: self.reservation.size(),
            reason: e.to_string(),
        })
    }

    /// Reserves what `actual` needs beyond what is held (measured once built, when it came out
    /// larger than its estimate).
    pub(crate) fn cover(&mut self, actual: usize) -> Result<()> {
        self.grow(actual.saturating_sub(self.reservation.size()))
    }

    /// Gives back everything held.
    pub(crate) fn release(&mut self) {
        self.reservation.free();
    }
}

/// Bytes reserved from a [`Flight`], given back on drop.
pub(crate) struct Held<'a> {
    flight: &'a Flight,
    bytes: usize,
}

impl Held<'_> {
    /// Reserves `more` bytes as well.
    pub(crate) fn grow(&mut self, more: usize) -> Result<()> {
        if more == 0 {
            return Ok(());
        }
        let r = self.flight.reservation.lock().unwrap_or_else(|p| p.into_inner());
        r.try_grow(more).map_err(|e| ViewError::InFlight {
            view: self.flight.view.clone(),
            what: "changes in flight",
            bytes: more,
            held: r.size(),
            reason: e.to_string(),
        })?;
        self.bytes += more;
        Ok(())
    }

    /// Reserves what `actual` needs beyond what is held (a piece measured once it is built,
    /// when it came out larger than its estimate).
    pub(crate) fn cover(&mut self, actual: usize) -> Result<()> {
        self.grow(actual.saturating_sub(self.bytes))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let r = self.flight.reservation.lock().unwrap_or_else(|p| p.into_inner());
            r.shrink(self.bytes.min(r.size()));
        }
    }
}
