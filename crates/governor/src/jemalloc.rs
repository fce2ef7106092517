//! Thin wrappers over jemalloc's control interface: read stats, give memory back to the OS.
//!
//! The numbers only describe the process's heap when jemalloc is the global allocator (the
//! `spillway` binary sets it); [`is_active`] tells whether it is.

use tikv_jemalloc_ctl::{epoch, stats};

/// One reading of jemalloc's counters, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JemallocStats {
    /// Bytes handed out to the application.
    pub allocated: u64,
    /// Bytes in active pages (allocated plus fragmentation).
    pub active: u64,
    /// Bytes in physically resident pages, including dirty pages not yet returned.
    pub resident: u64,
    /// Bytes in virtual memory retained for reuse (not resident).
    pub retained: u64,
}

/// Advances the stats epoch and reads the counters. `None` if jemalloc refuses (not linked
/// with stats support).
pub fn read() -> Option<JemallocStats> {
    epoch::advance().ok()?;
    Some(JemallocStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

/// True when jemalloc serves this process's allocations (it then has allocated something).
pub fn is_active() -> bool {
    // A test allocation: with jemalloc as the global allocator it shows up in `allocated`.
    let probe = vec![0u8; 1 << 20];
    let seen = read().map(|s| s.allocated >= (1 << 20)).unwrap_or(false);
    drop(std::hint::black_box(probe));
    seen
}

/// Returns unused dirty pages of every arena to the OS (`arena.<ALL>.purge`).
pub fn purge_all_arenas() {
    // MALLCTL_ARENAS_ALL is 4096 in jemalloc 5.
    const NAME: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a NUL-terminated name of a void mallctl; all value pointers are null as required.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            NAME.as_ptr() as *const _,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

/// The bytes jemalloc hands out for a request of `n` bytes (its size class): what a box of `n`
/// bytes really costs. `n` itself for `n == 0` or if jemalloc cannot say.
pub fn alloc_size(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    // SAFETY: nallocx only computes a size class; it reads no memory of ours.
    match unsafe { tikv_jemalloc_sys::nallocx(n, 0) } {
        0 => n,
        size => size,
    }
}

/// The bytes `f` leaves allocated on this thread (allocated less freed while it runs), with its
/// result: what a value it builds and returns really costs. `0` if jemalloc cannot say.
pub fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let counters = tikv_jemalloc_ctl::thread::allocatedp::read()
        .and_then(|a| tikv_jemalloc_ctl::thread::deallocatedp::read().map(|d| (a, d)));
    let Ok((allocated, freed)) = counters else { return (f(), 0) };
    let before = allocated.get().wrapping_sub(freed.get());
    let out = f();
    let after = allocated.get().wrapping_sub(freed.get());
    (out, after.saturating_sub(before) as usize)
}

/// Returns this thread's cached free objects to their arenas, so that `allocated` counts only
/// live objects (jemalloc counts an object a thread freed into its cache as allocated until the
/// cache is flushed).
pub fn flush_thread_cache() {
    // SAFETY: "thread.tcache.flush" takes no input and writes no output.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
