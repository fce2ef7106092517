//! A project folder: `spillway.toml` and `models/*.sql` (one `SELECT` per file, model name =
//! file stem).

use crate::error::{Error, Result};
use crate::settings::{comment_settings, ModelSettings, SettingsTable};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The TPC-H tables a `tpch` source provides.
pub const TPCH_TABLES: [&str; 8] = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"];

/// `[sources.NAME]`: where input tables come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceDef {
    /// Parquet file, folder or glob; the table is named after the source.
    Parquet {
        /// File, folder or glob, relative to the project.
        path: PathBuf,
    },
    /// CSV with a header row.
    Csv {
        /// File, folder or glob.
        path: PathBuf,
    },
    /// Newline-delimited JSON.
    Json {
        /// File, folder or glob.
        path: PathBuf,
    },
    /// Arrow IPC file.
    Arrow {
        /// File, folder or glob.
        path: PathBuf,
    },
    /// TPC-H generated on the fly: provides the eight TPC-H tables by their own names.
    Tpch {
        /// Scale factor.
        sf: f64,
    },
}

impl SourceDef {
    /// The table names this source provides.
    pub fn tables(&self, name: &str) -> Vec<String> {
        match self {
            SourceDef::Tpch { .. } => TPCH_TABLES.iter().map(|t| t.to_string()).collect(),
            _ => vec![name.to_string()],
        }
    }
}

/// `[sinks.NAME]`: where a model's output is published.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    /// The model whose output is written.
    pub model: String,
    /// Output file (.parquet, .csv, .json or .arrow), relative to the project.
    pub path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
struct ProjectFile {
    #[serde(default)]
    defaults: SettingsTable,
    #[serde(default)]
    sources: BTreeMap<String, SourceDef>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkDef>,
    #[serde(default)]
    models: BTreeMap<String, SettingsTable>,
    // Read by the CLI's settings, accepted here.
    #[allow(dead_code)]
    memory: Option<toml::Value>,
    #[allow(dead_code)]
    spill_dir: Option<toml::Value>,
    #[allow(dead_code)]
    max_spill: Option<toml::Value>,
    #[allow(dead_code)]
    governor: Option<toml::Value>,
}

/// One model: a `SELECT` in `models/NAME.sql`.
#[derive(Debug, Clone)]
pub struct Model {
    /// Model name (file stem).
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// The SQL text.
    pub sql: String,
    /// Resolved settings.
    pub settings: ModelSettings,
}

/// A loaded, validated project (see [`crate::Dag`] for dependencies).
#[derive(Debug, Clone)]
pub struct Project {
    /// The project folder.
    pub dir: PathBuf,
    /// `spillway.toml`, if present.
    pub config_path: Option<PathBuf>,
    /// Models by name.
    pub models: BTreeMap<String, Model>,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceDef>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkDef>,
}

impl Project {
    /// Loads `dir`: parses `spillway.toml` and every `models/*.sql`, resolving settings. Errors
    /// name the file and line.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Project> {
        Self::load_with(dir, &[])
    }

    /// Like [`Project::load`], with `spillway.toml` settings overridden by `KEY=VALUE` pairs
    /// (dotted keys, TOML values; a value that is not valid TOML is taken as a string), e.g.
    /// `sources.tpch.sf=10`.
    pub fn load_with(dir: impl Into<PathBuf>, overrides: &[String]) -> Result<Project> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::io(&dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no such project folder")));
        }
        let config_path = dir.join("spillway.toml");
        let (file, config_path) = if config_path.is_file() {
            let mut text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            if !overrides.is_empty() {
                text = apply_overrides(&text, overrides).map_err(|m| Error::at(&config_path, 1, m))?;
            }
            let parsed: ProjectFile = toml::from_str(&text).map_err(|e| {
                let line = e.span().map_or(1, |s| text[..s.start.min(text.len())].lines().count().max(1));
                Error::at(&config_path, line, e.message().to_string())
            })?;
            (parsed, Some(config_path))
        } else {
            (ProjectFile::default(), None)
        };
        let cfg = config_path.clone().unwrap_or_else(|| dir.join("spillway.toml"));
        let mut defaults = ModelSettings::default();
        defaults.apply(&file.defaults).map_err(|m| Error::at(&cfg, 1, format!("[defaults]: {m}")))?;

        let models_dir = dir.join("models");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&models_dir)
            .map_err(|e| Error::io(&models_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::at(&models_dir, 1, "no models: add one SELECT per file as models/NAME.sql"));
        }
        let mut models = BTreeMap::new();
        for path in paths {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            let sql = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let mut settings = defaults.clone();
            if let Some(t) = file.models.get(&name) {
                settings.apply(t).map_err(|m| Error::at(&cfg, 1, format!("[models.{name}]: {m}")))?;
            }
            for (line, k, v) in comment_settings(&sql) {
                settings.set(&k, &v).map_err(|m| Error::at(&path, line, m))?;
            }
            models.insert(name.clone(), Model { name, path, sql, settings });
        }
        for name in file.models.keys() {
            if !models.contains_key(name) {
                return Err(Error::at(&cfg, 1, format!("[models.{name}]: there is no models/{name}.sql")));
            }
        }
        let mut provided: BTreeMap<String, String> = BTreeMap::new();
        for (source, def) in &file.sources {
            for table in def.tables(source) {
                if models.contains_key(&table) {
                    return Err(Error::at(&cfg, 1, format!("source {source:?} provides table {table:?}, which is also a model")));
                }
                if let Some(other) = provided.insert(table.clone(), source.clone()) {
                    return Err(Error::at(&cfg, 1, format!("table {table:?} is provided by sources {other:?} and {source:?}")));
                }
            }
        }
        for (sink, def) in &file.sinks {
            if !models.contains_key(&def.model) {
                return Err(Error::at(&cfg, 1, format!("[sinks.{sink}]: model {:?} does not exist", def.model)));
            }
        }
        Ok(Project { dir, config_path, models, sources: file.sources, sinks: file.sinks })
    }

    /// Source tables by name, with the source that provides each.
    pub fn source_tables(&self) -> BTreeMap<String, String> {
        self.sources.iter().flat_map(|(n, d)| d.tables(n).into_iter().map(move |t| (t, n.clone()))).collect()
    }
}

/// `text` (a TOML document) with each `a.b.c=value` of `overrides` set.
fn apply_overrides(text: &str, overrides: &[String]) -> std::result::Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    for o in overrides {
        let (key, value) = o.split_once('=').ok_or_else(|| format!("--set {o:?}: expected KEY=VALUE"))?;
        let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
            Err(_) => toml::Value::String(value.into()),
        };
        let parts: Vec<&str> = key.trim().split('.').collect();
        let (last, path) = parts.split_last().ok_or_else(|| format!("--set {o:?}: empty key"))?;
        let mut table = &mut doc;
        for p in path {
            let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            table = entry.as_table_mut().ok_or_else(|| format!("--set {o:?}: {p} is not a table"))?;
        }
        table.insert(last.to_string(), value);
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// The 1-based line of the first whole-word, case-insensitive occurrence of `word` in `text`.
pub(crate) fn line_of(text: &str, word: &str) -> usize {
    let lower = text.to_ascii_lowercase();
    let w = word.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&w) {
        let start = from + pos;
        let end = start + w.len();
        let before_ok = start == 0 || !is_ident(bytes[start - 1]);
        let after_ok = end >= bytes.len() || !is_ident(bytes[end]);
        if before_ok && after_ok {
            return text[..start].lines().count().max(1) + usize::from(text[..start].ends_with('\n'));
        }
        from = end;
    }
    1
}
