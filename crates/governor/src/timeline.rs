//! The memory timeline: a sampler thread reads jemalloc and `/proc/self/statm` every ~50 ms and
//! records what it saw, for pressure levels, per-step peaks and reports.

use crate::jemalloc;
use crate::limits;
use crate::pressure::Pressure;
use std::sync::Mutex;
use std::time::Instant;

/// One sample of the process's memory, in bytes, `t_ms` after the governor started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Milliseconds since the governor started.
    pub t_ms: u64,
    /// jemalloc `stats.allocated`.
    pub allocated: u64,
    /// jemalloc `stats.active`.
    pub active: u64,
    /// jemalloc `stats.resident`.
    pub resident: u64,
    /// jemalloc `stats.retained`.
    pub retained: u64,
    /// Process resident set size from `/proc/self/statm` (includes the binary's code pages).
    pub rss: u64,
    /// Anonymous resident memory (RSS less file-backed pages): what the budget governs.
    pub rss_anon: u64,
    /// Bytes lent out in leases.
    pub leased: u64,
    /// Bytes reserved by DataFusion consumers inside leases.
    pub reserved: u64,
    /// Pressure level computed from this sample.
    #[serde(skip)]
    pub pressure_level: u8,
}

impl Sample {
    /// Pressure level of this sample.
    pub fn pressure(&self) -> Pressure {
        Pressure::from_u8(self.pressure_level)
    }
}

/// Most samples kept; beyond it every other sample is dropped (older history gets coarser).
const MAX_SAMPLES: usize = 200_000;

/// All samples so far, plus running peaks.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    samples: Vec<Sample>,
    peak_resident: u64,
    peak_rss: u64,
    peak_anon: u64,
}

impl Timeline {
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), inner: Mutex::new(Inner::default()) }
    }

    /// Milliseconds since the timeline started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Reads the allocator and the kernel now (does not record).
    pub(crate) fn measure(&self, leased: u64, reserved: u64) -> Sample {
        let je = jemalloc::read().unwrap_or_default();
        let pm = limits::process_memory().unwrap_or_default();
        Sample {
            t_ms: self.now_ms(),
            allocated: je.allocated,
            active: je.active,
            resident: je.resident,
            retained: je.retained,
            rss: pm.rss,
            rss_anon: pm.anon,
            leased,
            reserved,
            pressure_level: 0,
        }
    }

    pub(crate) fn record(&self, s: Sample) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.peak_resident = inner.peak_resident.max(s.resident);
        inner.peak_rss = inner.peak_rss.max(s.rss);
        inner.peak_anon = inner.peak_anon.max(s.rss_anon);
        if inner.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            inner.samples.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
        inner.samples.push(s);
    }

    /// A copy of every sample recorded so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).samples.clone()
    }

    /// The latest sample, if any.
    pub fn last(&self) -> Option<Sample> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).samples.last().copied()
    }

    /// Highest jemalloc resident bytes seen so far.
    pub fn peak_resident(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).peak_resident
    }

    /// Highest process RSS seen so far.
    pub fn peak_rss(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).peak_rss
    }

    /// Highest anonymous resident memory seen so far (what the budget governs).
    pub fn peak_anon(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).peak_anon
    }

    /// Highest (anonymous resident, process RSS) among samples taken in `[from_ms, to_ms]`.
    pub fn peak_between(&self, from_ms: u64, to_ms: u64) -> (u64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .samples
            .iter()
            .filter(|s| s.t_ms >= from_ms && s.t_ms <= to_ms)
            .fold((0, 0), |(r, p), s| (r.max(s.rss_anon), p.max(s.rss)))
    }
}
