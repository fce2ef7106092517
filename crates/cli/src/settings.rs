//! Resolves settings from flags, environment and the config file (in that order of precedence)
//! into what the commands need: the budget, the governor's configuration, cores, spill location.

use crate::args::GlobalArgs;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spillway_governor::limits::{self, Cores};
use spillway_governor::{Budget, ByteSize, GovernorConfig, MemorySpec, ProfileSize, PressureThresholds};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The budget used when neither a flag, `SPILLWAY_MEMORY` nor the config file sets one.
const DEFAULT_MEMORY: &str = "60%";

/// The parts of `spillway.toml` the governor reads. Other sections belong to other features.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// Budget, e.g. "12GiB" or "60%".
    pub memory: Option<String>,
    /// Spill root.
    pub spill_dir: Option<PathBuf>,
    /// Spill quota, e.g. "100GiB".
    pub max_spill: Option<String>,
    /// Governor tuning.
    #[serde(default)]
    pub governor: GovernorSection,
}

/// `[governor]` in `spillway.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorSection {
    /// Share of the budget never lent (default 0.15).
    pub headroom: Option<f64>,
    /// Heavy steps at once (default 1).
    pub heavy_slots: Option<usize>,
    /// Longest wait for a lease, seconds.
    pub lease_timeout_secs: Option<u64>,
    /// Sampler period, milliseconds.
    pub sample_interval_ms: Option<u64>,
    /// `S`, `M`, `L` → "10%" or "2GiB".
    pub profiles: Option<BTreeMap<String, String>>,
    /// Pressure thresholds as fractions of the budget.
    pub pressure: Option<PressureThresholds>,
    /// Share of each lease kept for consumers that cannot spill (default 0.2).
    pub unspillable_reserve: Option<f64>,
}

/// Everything resolved.
#[derive(Debug)]
pub struct Settings {
    pub budget: Budget,
    pub governor: GovernorConfig,
    pub cores: Cores,
    pub spill_root: PathBuf,
    pub max_spill: Option<u64>,
    pub unspillable_reserve: f64,
    pub config_file: Option<PathBuf>,
}

fn load_file(explicit: Option<&Path>, project: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>)> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = project.unwrap_or(Path::new(".")).join("spillway.toml");
            if !p.is_file() {
                return Ok((FileConfig::default(), None));
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config {}", path.display()))?;
    let cfg: FileConfig = toml::from_str(&text).with_context(|| format!("in config {}", path.display()))?;
    Ok((cfg, Some(path)))
}

/// Resolves settings; the config file is `--config`, else `spillway.toml` in the project folder
/// (commands that take one), else in the current folder.
pub fn resolve(global: &GlobalArgs, project: Option<&Path>) -> Result<Settings> {
    let (file, config_file) = load_file(global.config.as_deref(), project)?;
    let memory_text = global.memory.clone().or(file.memory.clone()).unwrap_or_else(|| DEFAULT_MEMORY.into());
    let spec: MemorySpec = memory_text.parse().context("--memory")?;
    let budget = Budget::resolve(spec, limits::memory_limit())?;
    let mut governor = GovernorConfig::new(budget.bytes);
    let g = &file.governor;
    if let Some(h) = g.headroom {
        governor.headroom = h;
    }
    if let Some(n) = g.heavy_slots {
        governor.heavy_slots = n;
    }
    if let Some(s) = g.lease_timeout_secs {
        governor.lease_timeout = Some(Duration::from_secs(s));
    }
    if let Some(ms) = g.sample_interval_ms {
        governor.sample_interval = Duration::from_millis(ms.max(1));
    }
    if let Some(p) = g.pressure {
        governor.pressure = p;
    }
    if let Some(profiles) = &g.profiles {
        for (name, size) in profiles {
            let idx = match name.to_ascii_uppercase().as_str() {
                "S" => 0,
                "M" => 1,
                "L" => 2,
                other => bail!("[governor.profiles]: unknown profile {other:?} (use S, M or L)"),
            };
            governor.profiles[idx] = size
                .parse::<ProfileSize>()
                .with_context(|| format!("[governor.profiles] {name}"))?;
        }
    }
    let unspillable_reserve = g.unspillable_reserve.unwrap_or(0.2);
    if !(0.0..=0.9).contains(&unspillable_reserve) {
        bail!("[governor] unspillable_reserve must be between 0 and 0.9, got {unspillable_reserve}");
    }
    let max_spill_text = global.max_spill.clone().or(file.max_spill.clone());
    let max_spill = match max_spill_text {
        Some(t) => Some(t.parse::<ByteSize>().context("--max-spill")?.bytes()),
        None => None,
    };
    let spill_root = global
        .spill_dir
        .clone()
        .or(file.spill_dir.clone())
        .unwrap_or_else(spillway_tiers::rundir::default_root);
    Ok(Settings {
        budget,
        governor,
        cores: limits::cores(),
        spill_root,
        max_spill,
        unspillable_reserve,
        config_file,
    })
}
