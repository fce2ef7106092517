//! The process's own code pages: found once, handed back to the page cache when they outgrow their
//! allowance.
//!
//! spillway's binary has ~100MB of machine code (DataFusion and arrow monomorphize their kernels
//! per type). A query touches scattered functions, and the kernel maps 64KiB around every page
//! fault ("fault-around"), so after a few queries 60-80MiB of code is resident in the process and
//! counted in its kernel peak RSS (VmHWM, what `/usr/bin/time` and the OOM killer's reports show).
//! At a 256MiB budget that alone is 30% of it.
//!
//! Those pages are clean copies of the executable file: `madvise(MADV_DONTNEED)` on the
//! executable's read-only mappings drops them from the process (they stay in the page cache, so
//! the next call of a function costs a minor fault, not a disk read), and the resident code
//! shrinks to what runs between two trims. Only mappings of the executable that are not writable
//! and hold no private (anonymous) page are trimmed: the RELRO segment, read-only after start-up
//! but relocated in private pages, is left alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// This process's code pages, found at first use.
pub(crate) fn this_process() -> &'static CodePages {
    static CODE: OnceLock<CodePages> = OnceLock::new();
    CODE.get_or_init(CodePages::of_this_process)
}

/// The executable's read-only, file-only mappings.
#[derive(Debug, Default)]
pub(crate) struct CodePages {
    ranges: Vec<(usize, usize)>,
    last_trim_ms: AtomicU64,
    started: Option<Instant>,
    /// Trims done (for tests and reports).
    pub(crate) trims: AtomicU64,
}

/// File-backed resident pages above which the code is trimmed: what runs in a steady loop (a
/// scan, a join, an aggregate) is 5-10MiB of code, libc and the other shared libraries a few MiB.
pub(crate) const TRIM_ABOVE: u64 = 16 << 20;

/// Trims are at most this frequent (the governor's sampling interval): each one costs a walk of
/// the mappings and a minor fault per 64KiB of code that runs again, well under 1ms. Once per
/// 200ms left the code of a query's start-up resident through its heaviest phase (TPC-H SF1 at
/// 64MiB: kernel peak RSS up to 141MiB, against 108-124MiB once per 50ms, at the same speed).
const MIN_INTERVAL: Duration = Duration::from_millis(50);

impl CodePages {
    /// The executable's trimmable mappings, from `/proc/self/smaps` (none without `/proc`).
    pub(crate) fn of_this_process() -> Self {
        let ranges = std::fs::read_link("/proc/self/exe")
            .ok()
            .and_then(|exe| Some((exe, std::fs::read_to_string("/proc/self/smaps").ok()?)))
            .map(|(exe, smaps)| trimmable(&smaps, &exe.to_string_lossy()))
            .unwrap_or_default();
        Self { ranges, last_trim_ms: AtomicU64::new(0), started: Some(Instant::now()), trims: AtomicU64::new(0) }
    }

    /// Trims when `file_resident` (the process's file-backed resident bytes) is above
    /// [`TRIM_ABOVE`]. Returns whether it trimmed.
    pub(crate) fn trim_if_above(&self, file_resident: u64) -> bool {
        file_resident > TRIM_ABOVE && self.trim()
    }

    /// Drops the resident code pages from the process, unless a trim ran less than
    /// [`MIN_INTERVAL`] ago. Returns whether it trimmed.
    pub(crate) fn trim(&self) -> bool {
        let Some(started) = self.started else { return false };
        if self.ranges.is_empty() {
            return false;
        }
        let now = started.elapsed().as_millis() as u64;
        let last = self.last_trim_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < MIN_INTERVAL.as_millis() as u64 {
            return false;
        }
        self.last_trim_ms.store(now.max(1), Ordering::Relaxed);
        for &(start, len) in &self.ranges {
            // SAFETY: the range is a private, read-only mapping of the executable file that holds
            // no anonymous page (checked when it was found; it cannot gain one, being read-only):
            // dropping its pages loses nothing, the next access maps the file's page again.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED);
            }
        }
        self.trims.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The mappings of `exe` in an smaps text that are private, not writable and hold no anonymous
/// page: `(start, length)`.
fn trimmable(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((lo, hi)) =
            first.split_once('-').filter(|(lo, _)| !lo.is_empty() && lo.chars().all(|c| c.is_ascii_hexdigit()))
        {
            // A mapping header: "start-end perms offset dev inode path".
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            current = None;
            if path == exe && perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-') && perms.ends_with('p') {
                if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                    current = Some((lo, hi - lo));
                }
            }
        } else if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_pages_of_the_executable_are_trimmable() {
        let smaps = "\
5600-5700 r--p 00000000 08:01 42 /usr/bin/spillway
Rss:                 128 kB
Anonymous:             0 kB
5700-5900 r-xp 00100000 08:01 42 /usr/bin/spillway
Anonymous:             0 kB
5900-5a00 r--p 00300000 08:01 42 /usr/bin/spillway
Anonymous:            16 kB
5a00-5b00 rw-p 00400000 08:01 42 /usr/bin/spillway
Anonymous:            32 kB
7f00-7f10 r-xp 00000000 08:01 7 /usr/lib/libc.so.6
Anonymous:             0 kB
";
        assert_eq!(trimmable(smaps, "/usr/bin/spillway"), vec![(0x5600, 0x100), (0x5700, 0x200)]);
    }

    #[test]
    fn trimming_this_process_keeps_it_running() {
        let code = CodePages::of_this_process();
        assert!(!code.ranges.is_empty(), "the test binary has read-only mappings");
        assert!(!code.trim_if_above(TRIM_ABOVE), "nothing to trim at the threshold");
        assert!(code.trim());
        // The code still runs after its pages were dropped.
        assert_eq!(trimmable("", "x"), vec![]);
        assert_eq!(code.trims.load(Ordering::Relaxed), 1);
    }
}
