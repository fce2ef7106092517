//! Resolves what the commands need (the budget, the governor's configuration, cores, temp space)
//! from flags and their `SPILLWAY_*` variables over the one [`Config`] read from `spillway.toml`
//! (with `--set` applied): a flag wins over the file, the file over the defaults.

use crate::args::GlobalArgs;
use anyhow::{Context, Result};
use spillway_governor::limits::{self, Cores};
use spillway_governor::{Budget, ByteSize, GovernorConfig, LedgerConfig, MemorySpec};
use spillway_project::Config;
use std::path::{Path, PathBuf};

/// The budget used when neither a flag, `SPILLWAY_MEMORY` nor the config file sets one.
const DEFAULT_MEMORY: &str = "60%";

/// Everything resolved.
#[derive(Debug)]
pub struct Settings {
    pub budget: Budget,
    pub governor: GovernorConfig,
    pub cores: Cores,
    pub spill_dir: PathBuf,
    pub max_spill: Option<u64>,
    pub unspillable_reserve: f64,
    pub config_file: Option<PathBuf>,
}

/// The machine-wide ledger: `--ledger` (`off` for none) at `--machine-memory` (default
/// [`DEFAULT_MEMORY`] of the machine's effective limit) less the headroom.
fn ledger(global: &GlobalArgs, governor: &GovernorConfig) -> Result<Option<LedgerConfig>> {
    let path = match global.ledger.as_deref() {
        Some("off") => return Ok(None),
        Some(p) => PathBuf::from(p),
        None => spillway_governor::ledger::default_path(),
    };
    let spec: MemorySpec =
        global.machine_memory.as_deref().unwrap_or(DEFAULT_MEMORY).parse().context("--machine-memory")?;
    let machine = Budget::resolve(spec, limits::memory_limit()).context("--machine-memory")?;
    let capacity = (machine.bytes as f64 * (1.0 - governor.headroom)) as u64;
    let mut label: String = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "spillway".to_string() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    label.truncate(label.char_indices().nth(100).map_or(label.len(), |(i, _)| i));
    Ok(Some(LedgerConfig { path, capacity, label }))
}

/// Reads the configuration once: `--config`, else `spillway.toml` in the project folder (for
/// commands that take one), else in the current folder; `overrides` are `--set` pairs.
pub fn load_config(global: &GlobalArgs, project: Option<&Path>, overrides: &[String]) -> Result<Config> {
    Ok(match &global.config {
        Some(p) => Config::load(p, overrides)?,
        None => Config::load_dir(project.unwrap_or(Path::new(".")), overrides)?,
    })
}

/// Resolves the settings from flags over `config`.
pub fn resolve(global: &GlobalArgs, config: &Config) -> Result<Settings> {
    let file = &config.file;
    let shown = config.path.as_ref().map_or("spillway.toml".into(), |p| p.display().to_string());
    let spec: MemorySpec = match &global.memory {
        Some(m) => m.parse().context("--memory")?,
        None => match file.memory().map_err(anyhow::Error::msg).with_context(|| format!("in {shown}"))? {
            Some(m) => m,
            None => DEFAULT_MEMORY.parse().context("default memory")?,
        },
    };
    let budget = Budget::resolve(spec, limits::memory_limit())?;
    let mut governor = file
        .governor
        .governor_config(budget.bytes)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("in {shown}"))?;
    governor.ledger = ledger(global, &governor)?;
    let max_spill = match &global.max_spill {
        Some(t) => Some(t.parse::<ByteSize>().context("--max-spill")?.bytes()),
        None => file.max_spill().map_err(anyhow::Error::msg).with_context(|| format!("in {shown}"))?,
    };
    let spill_dir =
        global.spill_dir.clone().or(file.spill_dir.clone()).unwrap_or_else(spillway_tiers::rundir::default_spill_dir);
    Ok(Settings {
        budget,
        governor,
        cores: limits::cores(),
        spill_dir,
        max_spill,
        unspillable_reserve: file.governor.unspillable_reserve(),
        config_file: config.path.clone(),
    })
}
