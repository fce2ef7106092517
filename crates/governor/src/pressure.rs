//! Pressure levels: how close resident memory is to the budget, and what each level means.
//!
//! ```text
//!  resident / budget:  0% ──────── 85% ──────── 90% ──────── 95% ────────▶
//!                        Normal   │  Moderate  │    High    │  Critical
//!                                 │ spillable  │ new leases │ (pipeline cancels the
//!                                 │ growth     │ wait       │  lowest-priority step)
//!                                 │ refused    │            │
//! ```

use std::fmt;

/// A pressure level, ordered from calm to dangerous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pressure {
    /// Plenty of room.
    Normal = 0,
    /// Spillable consumers are refused growth beyond a small floor, so they spill early.
    Moderate = 1,
    /// New leases wait until pressure falls.
    High = 2,
    /// The process is about to exceed its budget.
    Critical = 3,
}

impl Pressure {
    pub(crate) fn from_u8(v: u8) -> Pressure {
        match v {
            0 => Pressure::Normal,
            1 => Pressure::Moderate,
            2 => Pressure::High,
            _ => Pressure::Critical,
        }
    }
}

impl fmt::Display for Pressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pressure::Normal => "normal",
            Pressure::Moderate => "moderate",
            Pressure::High => "high",
            Pressure::Critical => "critical",
        })
    }
}

/// Fractions of the budget at which each level starts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PressureThresholds {
    /// Start of [`Pressure::Moderate`] (default 0.85).
    pub moderate: f64,
    /// Start of [`Pressure::High`] (default 0.90).
    pub high: f64,
    /// Start of [`Pressure::Critical`] (default 0.95).
    pub critical: f64,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        Self { moderate: 0.85, high: 0.90, critical: 0.95 }
    }
}

impl PressureThresholds {
    /// The level for `resident` bytes against `budget` bytes.
    pub fn level(&self, resident: u64, budget: u64) -> Pressure {
        let ratio = resident as f64 / budget.max(1) as f64;
        if ratio >= self.critical {
            Pressure::Critical
        } else if ratio >= self.high {
            Pressure::High
        } else if ratio >= self.moderate {
            Pressure::Moderate
        } else {
            Pressure::Normal
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let ok =
            0.0 < self.moderate && self.moderate <= self.high && self.high <= self.critical && self.critical <= 1.5;
        ok.then_some(()).ok_or_else(|| {
            format!(
                "thresholds must satisfy 0 < moderate <= high <= critical <= 1.5, got {}/{}/{}",
                self.moderate, self.high, self.critical
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_thresholds() {
        let t = PressureThresholds::default();
        assert_eq!(t.level(84, 100), Pressure::Normal);
        assert_eq!(t.level(85, 100), Pressure::Moderate);
        assert_eq!(t.level(90, 100), Pressure::High);
        assert_eq!(t.level(95, 100), Pressure::Critical);
        assert_eq!(t.level(500, 100), Pressure::Critical);
    }
}
