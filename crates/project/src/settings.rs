//! Per-model settings: `profile`, `class`, `materialize`, `retries`, `checkpoint`, `check`,
//! `isolate`, `engine`.
//!
//! They come from, in order of precedence: a leading `-- spillway: key=value ...` comment in the
//! model's file, `[models.NAME]` in `spillway.toml`, and `[defaults]` there.

use serde::Deserialize;
use spillway_governor::{ByteSize, GovernorConfig, Profile};
use spillway_tiers::Materialize;
use std::fmt;

/// How big a model's lease is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseSpec {
    /// A named profile (S/M/L).
    Profile(Profile),
    /// An exact size.
    Bytes(u64),
}

impl LeaseSpec {
    /// The bytes asked for under `config` (a profile resolves against the budget); not capped
    /// at what may be lent.
    pub fn bytes(self, config: &GovernorConfig) -> u64 {
        match self {
            LeaseSpec::Profile(p) => config.profile_bytes(p),
            LeaseSpec::Bytes(b) => b,
        }
    }
}

impl fmt::Display for LeaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseSpec::Profile(p) => write!(f, "{p:?}"),
            LeaseSpec::Bytes(b) => write!(f, "{}", ByteSize(*b)),
        }
    }
}

/// Heavy models run one at a time (they hold the heavy slot) and use all cores; light ones run
/// side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Holds the heavy slot.
    Heavy,
    /// Runs beside others.
    Light,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Heavy => "heavy",
            Class::Light => "light",
        })
    }
}

/// Whether a model runs in a child process of its own (`spillway worker`) under a memory cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolate {
    /// In the runner's process (the default).
    Off,
    /// In a child process, under a memory cgroup where one can be made, else rlimits.
    On,
    /// In a child process if the model is heavy and a memory cgroup can be made.
    Auto,
}

impl fmt::Display for Isolate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolate::Off => "false",
            Isolate::On => "true",
            Isolate::Auto => "auto",
        })
    }
}

/// `isolate` as `spillway.toml` holds it: `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IsolateValue {
    /// `true` or `false`.
    Flag(bool),
    /// `"auto"` (or `"true"`, `"false"`).
    Word(String),
}

/// Where a model's query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Here, under the governor (the default).
    Local,
    /// On the Ballista cluster at `[engine] url`; its rows come back here to be placed.
    Ballista,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Local => "local",
            Engine::Ballista => "ballista",
        })
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "local" => Ok(Engine::Local),
            "ballista" => Ok(Engine::Ballista),
            _ => Err(format!("engine = {value:?}: use local or ballista")),
        }
    }
}

/// A model's resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    /// Lease size (default profile M).
    pub lease: LeaseSpec,
    /// Heavy or light (default light).
    pub class: Class,
    /// Tier override for the model's output (default auto).
    pub materialize: Materialize,
    /// Retries after a failure (default 1, with escalation).
    pub retries: u32,
    /// Keep the output on disk as Parquet for resuming.
    pub checkpoint: bool,
    /// A check (like a dbt test): passes when it returns no rows; its rows are not kept.
    pub check: bool,
    /// Run in a child process under a memory cgroup (default off).
    pub isolate: Isolate,
    /// Where the query runs (default local, or `[engine] type`).
    pub engine: Engine,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            lease: LeaseSpec::Profile(Profile::M),
            class: Class::Light,
            materialize: Materialize::Auto,
            retries: 1,
            checkpoint: false,
            check: false,
            isolate: Isolate::Off,
            engine: Engine::Local,
        }
    }
}

/// Settings as written in `spillway.toml` (`[defaults]`, `[models.NAME]`): every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsTable {
    /// `S`, `M`, `L` or a size such as `2GiB`.
    pub profile: Option<String>,
    /// `heavy` or `light`.
    pub class: Option<String>,
    /// `auto`, `memory`, `ipc` or `parquet`.
    pub materialize: Option<String>,
    /// Retries after a failure.
    pub retries: Option<u32>,
    /// Keep the output as Parquet for resume.
    pub checkpoint: Option<bool>,
    /// The model is a check: it fails when it returns rows.
    pub check: Option<bool>,
    /// `true`, `false` or `"auto"`: run in a child process under a memory cgroup.
    pub isolate: Option<IsolateValue>,
    /// `local` or `ballista`: where the query runs.
    pub engine: Option<String>,
}

impl ModelSettings {
    /// Applies one `key = value`; `Err` says what is wrong with it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let value = value.trim().trim_matches('"');
        match key.trim() {
            "profile" => {
                self.lease = match value.parse::<Profile>() {
                    Ok(p) => LeaseSpec::Profile(p),
                    Err(_) => LeaseSpec::Bytes(
                        value
                            .parse::<ByteSize>()
                            .map_err(|_| format!("profile = {value:?}: use S, M, L or a size such as 2GiB"))?
                            .bytes(),
                    ),
                }
            }
            "class" => {
                self.class = match value.to_ascii_lowercase().as_str() {
                    "heavy" => Class::Heavy,
                    "light" => Class::Light,
                    _ => return Err(format!("class = {value:?}: use heavy or light")),
                }
            }
            "materialize" => self.materialize = value.parse().map_err(|e: spillway_tiers::Error| e.to_string())?,
            "retries" => {
                self.retries = value.parse().map_err(|_| format!("retries = {value:?}: use a whole number"))?
            }
            "checkpoint" => self.checkpoint = flag("checkpoint", value)?,
            "check" => self.check = flag("check", value)?,
            "isolate" => {
                self.isolate = match value.to_ascii_lowercase().as_str() {
                    "auto" => Isolate::Auto,
                    v => match flag("isolate", v) {
                        Ok(true) => Isolate::On,
                        Ok(false) => Isolate::Off,
                        Err(_) => return Err(format!("isolate = {value:?}: use true, false or auto")),
                    },
                }
            }
            "engine" => self.engine = value.parse()?,
            other => {
                return Err(format!(
                "unknown setting {other:?} (known: profile, class, materialize, retries, checkpoint, check, isolate, \
                     engine)"
            ))
            }
        }
        Ok(())
    }

    /// Applies a table from `spillway.toml`.
    pub fn apply(&mut self, t: &SettingsTable) -> Result<(), String> {
        let pairs = [
            ("profile", t.profile.clone()),
            ("class", t.class.clone()),
            ("materialize", t.materialize.clone()),
            ("retries", t.retries.map(|r| r.to_string())),
            ("checkpoint", t.checkpoint.map(|c| c.to_string())),
            ("check", t.check.map(|c| c.to_string())),
            (
                "isolate",
                t.isolate.as_ref().map(|v| match v {
                    IsolateValue::Flag(b) => b.to_string(),
                    IsolateValue::Word(w) => w.clone(),
                }),
            ),
            ("engine", t.engine.clone()),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                self.set(k, &v)?;
            }
        }
        Ok(())
    }
}

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        // A bare `check` (no `=value`) switches it on.
        "true" | "yes" | "1" | "" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key} = {value:?}: use true or false")),
    }
}

/// The `-- spillway: key=value ...` lines at the top of a model file: `(line, key, value)`.
/// Scanning stops at the first line that is neither blank nor a comment.
pub fn comment_settings(sql: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (i, line) in sql.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let Some(comment) = t.strip_prefix("--") else { break };
        let Some(rest) = comment.trim().strip_prefix("spillway:") else { continue };
        for pair in rest.split_whitespace() {
            match pair.split_once('=') {
                Some((k, v)) => out.push((i + 1, k.to_string(), v.to_string())),
                None => out.push((i + 1, pair.to_string(), String::new())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leading_comment_settings() {
        let sql = "-- revenue by month\n-- spillway: profile=L class=heavy\n--spillway: materialize=parquet retries=2\nSELECT 1";
        let mut s = ModelSettings::default();
        for (_, k, v) in comment_settings(sql) {
            s.set(&k, &v).unwrap();
        }
        assert_eq!(s.lease, LeaseSpec::Profile(Profile::L));
        assert_eq!(s.class, Class::Heavy);
        assert_eq!(s.materialize, Materialize::Parquet);
        assert_eq!(s.retries, 2);
        assert!(comment_settings("SELECT 1 -- spillway: class=heavy").is_empty());
    }

    #[test]
    fn rejects_bad_values() {
        let mut s = ModelSettings::default();
        assert!(s.set("profile", "XL").unwrap_err().contains("use S, M, L"));
        assert!(s.set("class", "medium").is_err());
        assert!(s.set("colour", "red").unwrap_err().contains("unknown setting"));
        s.set("profile", "512MiB").unwrap();
        assert_eq!(s.lease, LeaseSpec::Bytes(512 << 20));
    }
}
