//! Which isolation is in force: a memory cgroup under the runner's own where one can be made,
//! else `setrlimit` limits (`RLIMIT_DATA`, a cap on the child's data segment and private
//! mappings: coarser, as it counts virtual memory, but it needs no privilege).

use crate::cgroup::{self, Hierarchy};
use std::sync::OnceLock;

/// How children are confined on this machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Confinement {
    /// A memory cgroup per child, made under this one.
    Cgroup(Hierarchy),
    /// No writable memory cgroup: rlimits, and the child's own governor.
    Rlimit {
        /// Why no cgroup can be used.
        why: String,
    },
}

impl Confinement {
    /// Detected once per process: `SPILLWAY_ISOLATION=rlimit` forces the fallback (to test it,
    /// or where cgroups must not be touched). Stale child cgroups of dead runners are swept here.
    pub fn detect() -> &'static Confinement {
        static ONCE: OnceLock<Confinement> = OnceLock::new();
        ONCE.get_or_init(|| {
            if std::env::var("SPILLWAY_ISOLATION").is_ok_and(|v| v == "rlimit") {
                return Confinement::Rlimit { why: "SPILLWAY_ISOLATION=rlimit".into() };
            }
            match cgroup::own().and_then(|h| h.check_writable().map(|()| h)) {
                Ok(h) => {
                    h.sweep();
                    Confinement::Cgroup(h)
                }
                Err(why) => Confinement::Rlimit { why },
            }
        })
    }

    /// Whether a memory cgroup can be made (what `isolate = "auto"` asks).
    pub fn has_cgroup(&self) -> bool {
        matches!(self, Confinement::Cgroup(_))
    }

    /// One line for `spillway info`.
    pub fn describe(&self) -> String {
        match self {
            Confinement::Cgroup(h) => format!(
                "{} memory cgroup per isolated model, under {} (limit: lease + headroom)",
                h.version,
                h.dir.display()
            ),
            Confinement::Rlimit { why } => format!(
                "rlimits (RLIMIT_DATA = lease + headroom) and the child's own governor; no memory cgroup: {why}"
            ),
        }
    }

    /// A short name for reports: `cgroup v1`, `cgroup v2` or `rlimit`.
    pub fn name(&self) -> String {
        match self {
            Confinement::Cgroup(h) => h.version.to_string(),
            Confinement::Rlimit { .. } => "rlimit".into(),
        }
    }
}

/// What a child may use beyond its lease: its runtime, the allocator's metadata and free
/// pages, buffers DataFusion does not reserve. A quarter of the lease, at least 96MiB.
pub fn headroom(lease: u64) -> u64 {
    (lease / 4).max(96 << 20)
}

/// The rlimit fallback counts address space, not resident memory: thread stacks, the
/// allocator's reserved ranges. This much more is allowed on top of the budget.
pub(crate) const RLIMIT_SLACK: u64 = 1 << 30;
