//! `spillway.toml`, typed and read once: the budget, temp space and governor settings the CLI
//! resolves, and the project's defaults, sources, sinks and per-model settings.
//!
//! ```text
//!   --config FILE | DIR/spillway.toml | ./spillway.toml
//!        │ parsed with spans: a wrong type or an unknown key is an error at file:line
//!        ▼
//!   --set a.b=v ...   applied to the parsed document (TOML values; bare words are strings),
//!        │            every key alike: memory, spill_dir, max_spill, [governor], sources, ...
//!        ▼
//!   Config { file: ConfigFile, path }  ─▶ CLI settings (flags and SPILLWAY_* win over the file)
//!                                      ─▶ Project::from_config (models, sources, sinks)
//! ```

use crate::error::{Error, Result};
use crate::project::{SinkDef, SourceDef};
use crate::settings::{Engine, SettingsTable};
use crate::ClusterUrl;
use serde::Deserialize;
use spillway_governor::{ByteSize, GovernorConfig, MemorySpec, PressureThresholds, ProfileSize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `spillway.toml` may say. Every key is optional; an unknown key is an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Budget, e.g. "12GiB" or "60%".
    pub memory: Option<String>,
    /// Spill dir (spillway works in `spillway/` under it).
    pub spill_dir: Option<PathBuf>,
    /// Temp-space quota, e.g. "100GiB".
    pub max_spill: Option<String>,
    /// Governor tuning.
    #[serde(default)]
    pub governor: GovernorSection,
    /// Settings every model starts from.
    #[serde(default)]
    pub defaults: SettingsTable,
    /// Where input tables come from.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceDef>,
    /// Where models' outputs are published.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkDef>,
    /// Per-model settings.
    #[serde(default)]
    pub models: BTreeMap<String, SettingsTable>,
    /// Where models run unless they say otherwise, and the Ballista cluster.
    #[serde(default)]
    pub engine: EngineSection,
}

/// `[engine]` in `spillway.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// `local` (the default) or `ballista`: where models run unless they set `engine`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The Ballista scheduler, `df://host:port` (default df://localhost:50050).
    pub url: Option<String>,
}

impl EngineSection {
    /// Where models run unless they say otherwise.
    pub fn default_engine(&self) -> std::result::Result<Engine, String> {
        self.kind
            .as_deref()
            .map_or(Ok(Engine::Local), |k| k.parse().map_err(|e: String| e.replace("engine =", "type =")))
    }

    /// The scheduler models with `engine = "ballista"` run on.
    pub fn url(&self) -> std::result::Result<ClusterUrl, String> {
        let url = self.url.as_deref().unwrap_or("df://localhost:50050");
        url.parse::<ClusterUrl>().map_err(|e| format!("url = {url:?}: {e}"))
    }

    fn check(&self) -> std::result::Result<(), String> {
        self.default_engine()?;
        self.url().map(|_| ())
    }
}

/// `[governor]` in `spillway.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorSection {
    /// Share of the budget never lent.
    pub headroom: Option<f64>,
    /// Heavy steps at once.
    pub heavy_slots: Option<usize>,
    /// Longest wait for a lease, seconds.
    pub lease_timeout_secs: Option<u64>,
    /// Sampler period, milliseconds.
    pub sample_interval_ms: Option<u64>,
    /// `S`, `M`, `L` → "10%" or "2GiB".
    pub profiles: Option<BTreeMap<String, String>>,
    /// Pressure thresholds as fractions of the budget.
    pub pressure: Option<PressureThresholds>,
    /// Share of each lease kept for consumers that cannot spill.
    pub unspillable_reserve: Option<f64>,
}

/// A loaded `spillway.toml` (or none: every setting at its default).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// What it says.
    pub file: ConfigFile,
    /// The file it came from.
    pub path: Option<PathBuf>,
    /// Its text, for finding the line of a section in later messages.
    pub text: String,
}

impl Config {
    /// Reads `path` (which must exist) and applies `overrides` (`a.b.c=value`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, Some(path), overrides)
    }

    /// `dir/spillway.toml` when it exists, else an empty configuration; `overrides` apply either way.
    pub fn load_dir(dir: &Path, overrides: &[String]) -> Result<Config> {
        let path = dir.join("spillway.toml");
        if path.is_file() {
            Self::load(&path, overrides)
        } else {
            Self::parse("", None, overrides)
        }
    }

    /// Parses `text` (from `path`, for messages).
    pub fn parse(text: &str, path: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let shown = path.map_or_else(|| PathBuf::from("spillway.toml"), Path::to_path_buf);
        // First as written, so a mistake in the file is reported at its line.
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| Error::at(&shown, error_line(text, &e), e.message().to_string()))?;
        let file = if overrides.is_empty() {
            file
        } else {
            let mut doc: toml::Table =
                toml::from_str(text).map_err(|e| Error::at(&shown, 1, e.message().to_string()))?;
            for o in overrides {
                apply_override(&mut doc, o).map_err(Error::Usage)?;
            }
            ConfigFile::deserialize(toml::Value::Table(doc))
                .map_err(|e| Error::Usage(format!("--set {}: {}", overrides.join(" --set "), e.message())))?
        };
        file.governor.check().map_err(|m| Error::at(&shown, crate::project::section_line(text, "[governor"), m))?;
        file.engine
            .check()
            .map_err(|m| Error::at(&shown, crate::project::section_line(text, "[engine]"), format!("[engine]: {m}")))?;
        Ok(Config { file, path: path.map(Path::to_path_buf), text: text.to_string() })
    }

    /// The file to name in messages (`spillway.toml` when there is none).
    pub fn shown_path(&self, dir: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| dir.join("spillway.toml"))
    }
}

impl GovernorSection {
    /// Checks the values that need no budget to check.
    fn check(&self) -> std::result::Result<(), String> {
        if let Some(r) = self.unspillable_reserve {
            if !(0.0..=0.9).contains(&r) {
                return Err(format!("[governor] unspillable_reserve must be between 0 and 0.9, got {r}"));
            }
        }
        if let Some(profiles) = &self.profiles {
            for (name, size) in profiles {
                profile_index(name)?;
                size.parse::<ProfileSize>().map_err(|e| format!("[governor.profiles] {name} = {size:?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The governor's configuration for a budget of `budget` bytes: defaults, then this section.
    pub fn governor_config(&self, budget: u64) -> std::result::Result<GovernorConfig, String> {
        self.check()?;
        let mut g = GovernorConfig::new(budget);
        if let Some(h) = self.headroom {
            g.headroom = h;
        }
        if let Some(n) = self.heavy_slots {
            g.heavy_slots = n;
        }
        if let Some(s) = self.lease_timeout_secs {
            g.lease_timeout = Some(Duration::from_secs(s));
        }
        if let Some(ms) = self.sample_interval_ms {
            g.sample_interval = Duration::from_millis(ms.max(1));
        }
        if let Some(p) = self.pressure {
            g.pressure = p;
        }
        for (name, size) in self.profiles.iter().flatten() {
            g.profiles[profile_index(name)?] =
                size.parse::<ProfileSize>().map_err(|e| format!("[governor.profiles] {name}: {e}"))?;
        }
        Ok(g)
    }

    /// The share of each lease kept for unspillable consumers.
    pub fn unspillable_reserve(&self) -> f64 {
        self.unspillable_reserve.unwrap_or(spillway_governor::DEFAULT_UNSPILLABLE_RESERVE)
    }
}

impl ConfigFile {
    /// `memory`, parsed.
    pub fn memory(&self) -> std::result::Result<Option<MemorySpec>, String> {
        self.memory.as_deref().map(|m| m.parse::<MemorySpec>().map_err(|e| format!("memory = {m:?}: {e}"))).transpose()
    }

    /// `max_spill` in bytes, parsed.
    pub fn max_spill(&self) -> std::result::Result<Option<u64>, String> {
        self.max_spill
            .as_deref()
            .map(|m| m.parse::<ByteSize>().map(|b| b.bytes()).map_err(|e| format!("max_spill = {m:?}: {e}")))
            .transpose()
    }
}

/// The line a TOML error is at: an unknown key's own line (the parser's span covers its whole
/// table), else where the span starts.
fn error_line(text: &str, e: &toml::de::Error) -> usize {
    let from = e.span().map_or(0, |s| s.start.min(text.len()));
    let line_at = |pos: usize| text[..pos].lines().count().max(1) + usize::from(pos > 0 && text[..pos].ends_with('\n'));
    if let Some(key) = e.message().strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        let mut pos = from;
        for line in text[from..].split_inclusive('\n') {
            let t = line.trim_start().trim_start_matches('"');
            if t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(['=', '.', '"'])) {
                return line_at(pos);
            }
            pos += line.len();
        }
    }
    if from == 0 {
        1
    } else {
        text[..from].lines().count().max(1)
    }
}

fn profile_index(name: &str) -> std::result::Result<usize, String> {
    match name.to_ascii_uppercase().as_str() {
        "S" => Ok(0),
        "M" => Ok(1),
        "L" => Ok(2),
        other => Err(format!("[governor.profiles]: unknown profile {other:?} (use S, M or L)")),
    }
}

/// Sets `a.b.c=value` in `doc` (a value that is not valid TOML is taken as a string).
fn apply_override(doc: &mut toml::Table, o: &str) -> std::result::Result<(), String> {
    let (key, value) = o.split_once('=').ok_or_else(|| format!("--set {o:?}: expected KEY=VALUE"))?;
    let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("--set {o:?}: empty key"));
    }
    let (last, path) = parts.split_last().ok_or_else(|| format!("--set {o:?}: empty key"))?;
    let mut table = doc;
    for p in path {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry.as_table_mut().ok_or_else(|| format!("--set {o:?}: {p} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_at_their_line() {
        let e = Config::parse("memory = \"1GiB\"\nmax_spil = \"2GiB\"\n", Some(Path::new("p/spillway.toml")), &[])
            .unwrap_err();
        assert!(e.to_string().starts_with("p/spillway.toml:2: unknown field `max_spil`"), "{e}");
        let e = Config::parse("[governor]\nheavy_slot = 2\n", None, &[]).unwrap_err();
        assert!(e.to_string().contains(":2: unknown field `heavy_slot`"), "{e}");
        let e = Config::parse("memory = 12\n", None, &[]).unwrap_err();
        assert!(e.to_string().contains(":1: invalid type"), "{e}");
    }

    #[test]
    fn set_reaches_every_key() {
        let c = Config::parse(
            "memory = \"1GiB\"\n",
            None,
            &["memory=2GiB".into(), "governor.heavy_slots=2".into(), "spill_dir=/x".into()],
        )
        .unwrap();
        assert_eq!(c.file.memory.as_deref(), Some("2GiB"));
        assert_eq!(c.file.governor.heavy_slots, Some(2));
        assert_eq!(c.file.spill_dir, Some(PathBuf::from("/x")));
        let e = Config::parse("", None, &["max_spil=1GiB".into()]).unwrap_err();
        assert!(e.to_string().contains("--set max_spil=1GiB: unknown field `max_spil`"), "{e}");
        let e = Config::parse("", None, &["governor.unspillable_reserve=2".into()]).unwrap_err();
        assert!(e.to_string().contains("unspillable_reserve must be between 0 and 0.9"), "{e}");
    }
}
