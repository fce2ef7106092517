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
