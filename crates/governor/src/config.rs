//! Governor settings: how the budget is resolved and how it is divided.

use crate::error::{Error, Result};
use crate::ledger::LedgerConfig;
use crate::limits::MemoryLimit;
use crate::pressure::PressureThresholds;
use crate::size::{fmt_bytes, ByteSize, MemorySpec};
use std::time::Duration;

/// The smallest budget spillway accepts: below it DataFusion cannot run a plan at all.
pub const MIN_BUDGET: u64 = 16 << 20;

/// A resolved budget: bytes, and how they were derived (for `spillway info` and reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// The budget in bytes.
    pub bytes: u64,
    /// What the user asked for.
    pub spec: MemorySpec,
    /// The effective limit the budget was checked against.
    pub limit: MemoryLimit,
}

impl Budget {
    /// Resolves `spec` against the effective `limit`: a percentage applies to the limit; a size
    /// must not exceed it and must be at least [`MIN_BUDGET`].
    pub fn resolve(spec: MemorySpec, limit: MemoryLimit) -> Result<Budget> {
        let bytes = match spec {
            MemorySpec::Bytes(b) => b.0,
            MemorySpec::Percent(p) => (limit.bytes as f64 * p / 100.0) as u64,
        };
        if bytes > limit.bytes {
            return Err(Error::BudgetAboveLimit {
                budget: fmt_bytes(bytes),
                limit: fmt_bytes(limit.bytes),
                source_desc: limit.source.to_string(),
            });
        }
        if bytes < MIN_BUDGET {
            return Err(Error::BudgetTooSmall { budget: fmt_bytes(bytes), minimum: fmt_bytes(MIN_BUDGET) });
        }
        Ok(Budget { bytes, spec, limit })
    }
}

/// The size of a lease profile: a fraction of the budget or a fixed size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProfileSize {
    /// Fraction of the budget (0, 1].
    Fraction(f64),
    /// Fixed bytes.
    Bytes(u64),
}

impl ProfileSize {
    fn resolve(self, budget: u64) -> u64 {
        match self {
            ProfileSize::Fraction(f) => (budget as f64 * f) as u64,
            ProfileSize::Bytes(b) => b,
        }
    }
}

impl std::str::FromStr for ProfileSize {
    type Err = Error;
    /// `30%` or a size such as `2GiB`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.parse::<MemorySpec>()? {
            MemorySpec::Percent(p) => ProfileSize::Fraction(p / 100.0),
            MemorySpec::Bytes(ByteSize(b)) => ProfileSize::Bytes(b),
        })
    }
}

/// The named lease sizes steps ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Small (default 10% of the budget).
    S,
    /// Medium (default 30%).
    M,
    /// Large (default 60%).
    L,
}

impl std::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "S" | "SMALL" => Ok(Profile::S),
            "M" | "MEDIUM" => Ok(Profile::M),
            "L" | "LARGE" => Ok(Profile::L),
            _ => Err(Error::InvalidSetting { name: "profile", reason: format!("{s:?} is not S, M or L") }),
        }
    }
}

/// Everything the governor needs to know. Build one with [`GovernorConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct GovernorConfig {
    /// Total bytes spillway may use.
    pub budget: u64,
    /// Share of the budget never lent, for allocations DataFusion does not track (default 0.15).
    pub headroom: f64,
    /// Sizes of the S/M/L profiles.
    pub profiles: [ProfileSize; 3],
    /// Pressure level thresholds.
    pub pressure: PressureThresholds,
    /// How many heavy steps may run at once (default 1).
    pub heavy_slots: usize,
    /// How long a lease request may wait before failing (`None`: forever).
    pub lease_timeout: Option<Duration>,
    /// How often the sampler reads jemalloc and RSS (default 50 ms; a fifth of it while the
    /// kernel counts more than half the budget).
    pub sample_interval: Duration,
    /// Whether releasing a lease purges jemalloc arenas (default true).
    pub purge_on_release: bool,
    /// The machine-wide ledger this governor also leases from (default none: the process's own
    /// budget only). The CLI sets it for every spillway process.
    pub ledger: Option<LedgerConfig>,
}

impl GovernorConfig {
    /// Defaults for a budget of `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            headroom: 0.15,
            profiles: [ProfileSize::Fraction(0.10), ProfileSize::Fraction(0.30), ProfileSize::Fraction(0.60)],
            pressure: PressureThresholds::default(),
            heavy_slots: 1,
            lease_timeout: Some(Duration::from_secs(3600)),
            sample_interval: Duration::from_millis(50),
            purge_on_release: true,
            ledger: None,
        }
    }

    /// Bytes that may be lent out: the budget less the headroom.
    pub fn leasable(&self) -> u64 {
        (self.budget as f64 * (1.0 - self.headroom)) as u64
    }

    /// Bytes of a profile, capped at what may be lent.
    pub fn profile_bytes(&self, profile: Profile) -> u64 {
        let idx = match profile {
            Profile::S => 0,
            Profile::M => 1,
            Profile::L => 2,
        };
        self.profiles[idx].resolve(self.budget).min(self.leasable())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(Error::InvalidSetting { name, reason });
        if !(0.0..0.9).contains(&self.headroom) {
            return bad("headroom", format!("{} is not in [0, 0.9)", self.headroom));
        }
        if self.heavy_slots == 0 {
            return bad("heavy_slots", "must be at least 1".into());
        }
        for p in self.profiles {
            if let ProfileSize::Fraction(f) = p {
                if !(f > 0.0 && f <= 1.0) {
                    return bad("profiles", format!("fraction {f} is not in (0, 1]"));
                }
            }
        }
        if let Err(reason) = self.pressure.validate() {
            return bad("pressure", reason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitSource;

    fn limit(bytes: u64) -> MemoryLimit {
        MemoryLimit { bytes, source: LimitSource::MemTotal, mem_total: bytes }
    }

    #[test]
    fn percent_applies_to_effective_limit() {
        let b = Budget::resolve("50%".parse().unwrap(), limit(8 << 30)).unwrap();
        assert_eq!(b.bytes, 4 << 30);
    }

    #[test]
    fn rejects_budget_above_limit_and_below_minimum() {
        let e = Budget::resolve("16GiB".parse().unwrap(), limit(8 << 30)).unwrap_err();
        assert!(e.to_string().contains("larger than the effective memory limit 8GiB"), "{e}");
        let e = Budget::resolve("1MiB".parse().unwrap(), limit(8 << 30)).unwrap_err();
        assert!(e.to_string().contains("below the workable minimum"), "{e}");
    }

    #[test]
    fn profiles_are_capped_by_leasable() {
        let mut c = GovernorConfig::new(1000 << 20);
        assert_eq!(c.profile_bytes(Profile::S), 100 << 20);
        c.profiles[2] = ProfileSize::Fraction(1.0);
        assert_eq!(c.profile_bytes(Profile::L), c.leasable());
    }
}
