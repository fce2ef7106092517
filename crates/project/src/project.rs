//! A project folder: `spillway.toml` and `models/*.sql` (one `SELECT` per file, model name =
//! file stem).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::settings::{comment_settings, Engine, Isolate, ModelSettings};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The TPC-H tables a `tpch` source provides.
pub const TPCH_TABLES: [&str; 8] =
    ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"];

/// `[sources.NAME]`: where input tables come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceDef {
    /// Parquet file, folder or glob; the table is named after the source.
    Parquet {
        /// File, folder or glob, relative to the project.
        path: PathBuf,
        /// Key columns (what `upsert` and a key-only `delete` in change files match on).
        key: Option<Vec<String>>,
        /// Folder of change files (the table's columns plus `_op`) that `views apply` reads.
        changes: Option<PathBuf>,
    },
    /// CSV with a header row.
    Csv {
        /// File, folder or glob.
        path: PathBuf,
        /// Key columns (what `upsert` and a key-only `delete` in change files match on).
        key: Option<Vec<String>>,
        /// Folder of change files (the table's columns plus `_op`) that `views apply` reads.
        changes: Option<PathBuf>,
    },
    /// Newline-delimited JSON.
    Json {
        /// File, folder or glob.
        path: PathBuf,
        /// Key columns (what `upsert` and a key-only `delete` in change files match on).
        key: Option<Vec<String>>,
        /// Folder of change files (the table's columns plus `_op`) that `views apply` reads.
        changes: Option<PathBuf>,
    },
    /// Arrow IPC file.
    Arrow {
        /// File, folder or glob.
        path: PathBuf,
        /// Key columns (what `upsert` and a key-only `delete` in change files match on).
        key: Option<Vec<String>>,
        /// Folder of change files (the table's columns plus `_op`) that `views apply` reads.
        changes: Option<PathBuf>,
    },
    /// TPC-H generated on the fly: provides the eight TPC-H tables by their own names.
    Tpch {
        /// Scale factor.
        sf: f64,
        /// Folder of change files, one subfolder per table (`changes/lineitem/...`).
        changes: Option<PathBuf>,
        /// The tables that get change files (default: all eight). The others never change:
        /// views' joins keep no state for the side opposite them.
        change_tables: Option<Vec<String>>,
    },
    /// A PostgreSQL table or query, read with binary COPY (filters pushed down).
    Postgres {
        /// Connection URL (better: `url_env`, so no password is in the file).
        url: Option<String>,
        /// Environment variable holding the URL.
        url_env: Option<String>,
        /// Table (`schema.table` or with `schema`).
        table: Option<String>,
        /// Schema of `table` (default `public`).
        schema: Option<String>,
        /// A `SELECT` to read instead of a table.
        query: Option<String>,
        /// Follow the table's changes through logical replication (`views serve`).
        cdc: Option<bool>,
        /// cdc: the publication (created when missing; default `spillway_<project folder>`).
        publication: Option<String>,
        /// cdc: the replication slot (default `spillway_<project folder>`). Sources sharing one
        /// database and slot arrive as one stream, so a transaction over several is one.
        slot: Option<String>,
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

impl SourceDef {
    /// The folder of change files of `table` (provided by this source), relative to the project.
    pub fn changes(&self, table: &str) -> Option<PathBuf> {
        match self {
            SourceDef::Parquet { changes, .. }
            | SourceDef::Csv { changes, .. }
            | SourceDef::Json { changes, .. }
            | SourceDef::Arrow { changes, .. } => changes.clone(),
            SourceDef::Tpch { changes, change_tables, .. } => changes
                .as_ref()
                .filter(|_| change_tables.as_ref().is_none_or(|t| t.iter().any(|t| t == table)))
                .map(|c| c.join(table)),
            SourceDef::Postgres { .. } => None,
        }
    }

    /// The key columns declared for the source's table.
    pub fn key(&self) -> Option<&[String]> {
        match self {
            SourceDef::Parquet { key, .. }
            | SourceDef::Csv { key, .. }
            | SourceDef::Json { key, .. }
            | SourceDef::Arrow { key, .. } => key.as_deref(),
            SourceDef::Tpch { .. } | SourceDef::Postgres { .. } => None,
        }
    }

    /// A `postgres` source as the postgres crate takes it; `None` for other sources.
    pub fn postgres(&self, name: &str) -> Option<Result<spillway_postgres::SourceSpec, String>> {
        let SourceDef::Postgres { url, url_env, table, schema, query, .. } = self else { return None };
        let conn = spillway_postgres::ConnSpec { url: url.clone(), url_env: url_env.clone() };
        Some(match (table, query) {
            (Some(_), Some(_)) | (None, None) => Err("give either `table` or `query`".into()),
            _ if url.is_none() && url_env.is_none() => {
                Err("give `url_env` (an environment variable holding the URL) or `url`".into())
            }
            _ => Ok(spillway_postgres::SourceSpec {
                name: name.to_string(),
                conn,
                table: table.as_deref().map(|t| spillway_postgres::TableName::new(schema.as_deref(), t)),
                query: query.clone(),
            }),
        })
    }
}

/// A source followed with change data capture (`type = "postgres"`, `cdc = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcSource {
    /// Where to connect.
    pub conn: spillway_postgres::ConnSpec,
    /// The table followed.
    pub table: spillway_postgres::TableName,
    /// The publication.
    pub publication: String,
    /// The replication slot.
    pub slot: String,
}

impl SourceDef {
    /// The CDC settings of a `postgres` source with `cdc = true` (`None` otherwise; `Err` when
    /// it is not a table). `project_dir` names the default slot and publication.
    pub fn cdc(&self, project_dir: &std::path::Path) -> Option<Result<CdcSource, String>> {
        let SourceDef::Postgres { url, url_env, table, schema, query, cdc: Some(true), publication, slot } = self
        else {
            return None;
        };
        let Some(table) = table.as_deref().filter(|_| query.is_none()) else {
            return Some(Err("cdc = true follows a table: give `table`, not `query`".into()));
        };
        let default = default_slot(project_dir);
        Some(Ok(CdcSource {
            conn: spillway_postgres::ConnSpec { url: url.clone(), url_env: url_env.clone() },
            table: spillway_postgres::TableName::new(schema.as_deref(), table),
            publication: publication.clone().unwrap_or_else(|| default.clone()),
            slot: slot.clone().unwrap_or(default),
        }))
    }
}

/// `spillway_<project folder>` in the characters a slot name may hold (lower-case letters, digits
/// and `_`), at most 63 bytes.
pub fn default_slot(project_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.to_path_buf());
    let stem = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let clean: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut name = format!("spillway_{clean}");
    name.truncate(63);
    name
}

/// `[sinks.NAME]`: where a model's output is published: a file (`path`), or a PostgreSQL table
/// (`type = "postgres"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    /// The model whose output is written.
    pub model: String,
    /// `file` (the default) or `postgres`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Output file (.parquet, .csv, .json or .arrow), relative to the project.
    pub path: Option<PathBuf>,
    /// postgres: connection URL (better: `url_env`).
    pub url: Option<String>,
    /// postgres: environment variable holding the URL.
    pub url_env: Option<String>,
    /// postgres: the table (`schema.table` or with `schema`).
    pub table: Option<String>,
    /// postgres: schema of `table` (default `public`).
    pub schema: Option<String>,
    /// postgres: `replace` (default), `append` or `upsert`.
    pub mode: Option<String>,
    /// postgres: key columns (primary key of a created table; what `upsert` matches on).
    pub key: Option<Vec<String>>,
    /// postgres: indexes built after the load, each `"col"` or `"col1, col2"`.
    pub indexes: Option<Vec<String>>,
    /// postgres: create the table UNLOGGED (scratch tables: no WAL, emptied by a crash).
    pub unlogged: Option<bool>,
    /// postgres: `"off"` (or false) sets synchronous_commit = off for the load.
    pub synchronous_commit: Option<toml::Value>,
    /// postgres: `fail` (default) or `recreate` (replace mode: a table whose columns differ is
    /// replaced by one with the model's columns).
    pub on_schema_change: Option<String>,
    /// postgres: skip the sink (noting why) when `url_env` is not set, instead of failing.
    pub optional: Option<bool>,
    /// postgres, replace mode: COPY streams loading at once (default 1: one transaction).
    pub streams: Option<usize>,
    /// A file sink of a view: write each transaction's change (rows with `_weight`) instead of
    /// the view's contents.
    pub changelog: Option<bool>,
}

/// Where a sink publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkTarget {
    /// A file, published atomically (absolute path).
    File(PathBuf),
    /// A PostgreSQL table; `optional` sinks are skipped when their URL variable is unset.
    Postgres {
        /// What and how to load.
        spec: spillway_postgres::SinkSpec,
        /// Skip when `url_env` is unset.
        optional: bool,
    },
}

impl SinkDef {
    /// The published file of a file sink, relative to the project.
    pub fn file(&self) -> Option<&PathBuf> {
        match self.kind.as_deref() {
            None | Some("file") => self.path.as_ref(),
            _ => None,
        }
    }

    /// Where sink `name` publishes (`dir` is the project folder); `Err` says what is wrong.
    pub fn target(&self, name: &str, dir: &std::path::Path) -> std::result::Result<SinkTarget, String> {
        let pg_keys = [
            ("url", self.url.is_some()),
            ("url_env", self.url_env.is_some()),
            ("table", self.table.is_some()),
            ("schema", self.schema.is_some()),
            ("mode", self.mode.is_some()),
            ("key", self.key.is_some()),
            ("indexes", self.indexes.is_some()),
            ("unlogged", self.unlogged.is_some()),
            ("synchronous_commit", self.synchronous_commit.is_some()),
            ("on_schema_change", self.on_schema_change.is_some()),
            ("optional", self.optional.is_some()),
            ("streams", self.streams.is_some()),
        ];
        match self.kind.as_deref() {
            None | Some("file") => {
                if let Some((k, _)) = pg_keys.iter().find(|(_, set)| *set) {
                    return Err(format!("`{k}` is a postgres setting: add type = \"postgres\" (or remove it)"));
                }
                let path =
                    self.path.as_ref().ok_or("a file sink needs `path` (or type = \"postgres\" with `table`)")?;
                if spillway_tiers::FileFormat::from_path(path).is_none() {
                    return Err(format!(
                        "path = {:?}: unknown output type; use .parquet, .csv, .json/.ndjson or .arrow",
                        path.display().to_string()
                    ));
                }
                Ok(SinkTarget::File(dir.join(path)))
            }
            Some("postgres") => {
                if self.path.is_some() {
                    return Err("a postgres sink has `table`, not `path`".into());
                }
                let table = self.table.as_deref().ok_or("a postgres sink needs `table`")?;
                if self.url.is_none() && self.url_env.is_none() {
                    return Err("give `url_env` (an environment variable holding the URL) or `url`".into());
                }
                let conn = spillway_postgres::ConnSpec { url: self.url.clone(), url_env: self.url_env.clone() };
                let mut spec = spillway_postgres::SinkSpec::new(
                    name,
                    conn,
                    spillway_postgres::TableName::new(self.schema.as_deref(), table),
                );
                if let Some(m) = &self.mode {
                    spec.mode = m.parse()?;
                }
                spec.key = self.key.clone().unwrap_or_default();
                spec.indexes = self
                    .indexes
                    .iter()
                    .flatten()
                    .map(|i| i.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
                    .collect();
                spec.unlogged = self.unlogged.unwrap_or(false);
                spec.synchronous_commit = match &self.synchronous_commit {
                    None => true,
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(toml::Value::String(s)) if s.eq_ignore_ascii_case("on") => true,
                    Some(toml::Value::String(s)) if s.eq_ignore_ascii_case("off") => false,
                    Some(other) => return Err(format!("synchronous_commit = {other}: use \"on\" or \"off\"")),
                };
                spec.recreate_on_schema_change = match self.on_schema_change.as_deref() {
                    None | Some("fail") => false,
                    Some("recreate") => true,
                    Some(other) => return Err(format!("on_schema_change = {other:?}: use fail or recreate")),
                };
                spec.streams = self.streams.unwrap_or(1);
                spec.validate()?;
                let optional = self.optional.unwrap_or(false);
                if optional && self.url_env.is_none() {
                    return Err("`optional` needs `url_env` (the sink is skipped while that variable is unset)".into());
                }
                Ok(SinkTarget::Postgres { spec, optional })
            }
            Some(other) => Err(format!("type = {other:?}: use file or postgres")),
        }
    }
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

/// How a view is kept up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// From the changes of its inputs (the default).
    Incremental,
    /// By running its query again after every transaction that changes one of its inputs
    /// (`-- spillway: refresh=recompute`, for shapes the engine cannot maintain).
    Recompute,
}

/// One view: a `SELECT` in `views/NAME.sql`, kept up to date by `spillway views apply`.
#[derive(Debug, Clone)]
pub struct ViewDef {
    /// View name (file stem).
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// The SQL text.
    pub sql: String,
    /// How it is kept up to date.
    pub refresh: Refresh,
}

/// `views/*.sql` of `dir` (none when the folder does not exist).
fn load_views(dir: &std::path::Path) -> Result<BTreeMap<String, ViewDef>> {
    let views_dir = dir.join("views");
    let mut out = BTreeMap::new();
    if !views_dir.is_dir() {
        return Ok(out);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&views_dir)
        .map_err(|e| Error::io(&views_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let sql = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut refresh = Refresh::Incremental;
        for (line, k, v) in comment_settings(&sql) {
            match (k.as_str(), v.as_str()) {
                ("refresh", "incremental") => refresh = Refresh::Incremental,
                ("refresh", "recompute") => refresh = Refresh::Recompute,
                ("refresh", other) => {
                    return Err(Error::at(&path, line, format!("refresh={other}: use incremental or recompute")))
                }
                (other, _) => return Err(Error::at(&path, line, format!("{other}: a view's only setting is refresh"))),
            }
        }
        out.insert(name.clone(), ViewDef { name, path, sql, refresh });
    }
    Ok(out)
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
    /// Views by name (`views/*.sql`).
    pub views: BTreeMap<String, ViewDef>,
    /// The text of `spillway.toml` as read (to point messages at a section's line).
    pub config_text: String,
    /// The Ballista scheduler, when a model runs there (`engine = "ballista"`).
    pub cluster: Option<crate::ClusterUrl>,
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
        Self::from_config(dir.clone(), &Config::load_dir(&dir, overrides)?)
    }

    fn check_dir(dir: &std::path::Path) -> Result<()> {
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no such project folder")));
        }
        Ok(())
    }

    /// The project in `dir` as `config` describes it (read once by the caller, e.g. from
    /// `--config`): its models are `dir/models/*.sql`.
    pub fn from_config(dir: impl Into<PathBuf>, config: &Config) -> Result<Project> {
        let dir = dir.into();
        Self::check_dir(&dir)?;
        let file = &config.file;
        let config_path = config.path.clone();
        let cfg = config_path.clone().unwrap_or_else(|| dir.join("spillway.toml"));
        // Checked when the configuration was parsed.
        let engine = file.engine.default_engine().map_err(Error::Usage)?;
        let mut defaults = ModelSettings { engine, ..ModelSettings::default() };
        defaults
            .apply(&file.defaults)
            .map_err(|m| Error::at(&cfg, section_line(&config.text, "[defaults]"), format!("[defaults]: {m}")))?;

        let models_dir = dir.join("models");
        let views = load_views(&dir)?;
        let mut paths: Vec<PathBuf> = if models_dir.is_dir() || views.is_empty() {
            std::fs::read_dir(&models_dir)
                .map_err(|e| Error::io(&models_dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect()
        } else {
            Vec::new()
        };
        paths.sort();
        if paths.is_empty() && views.is_empty() {
            return Err(Error::at(&models_dir, 1, "no models: add one SELECT per file as models/NAME.sql"));
        }
        let mut models = BTreeMap::new();
        for path in paths {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            let sql = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let mut settings = defaults.clone();
            if let Some(t) = file.models.get(&name) {
                settings.apply(t).map_err(|m| {
                    Error::at(
                        &cfg,
                        section_line(&config.text, &format!("[models.{name}]")),
                        format!("[models.{name}]: {m}"),
                    )
                })?;
            }
            for (line, k, v) in comment_settings(&sql) {
                settings.set(&k, &v).map_err(|m| Error::at(&path, line, m))?;
            }
            if settings.engine == Engine::Ballista && settings.isolate == Isolate::On {
                return Err(Error::at(
                    &path,
                    1,
                    format!("{name}: isolate = true and engine = \"ballista\" cannot both be set (a model on the cluster runs in its executors)"),
                ));
            }
            models.insert(name.clone(), Model { name, path, sql, settings });
        }
        for name in file.models.keys() {
            if !models.contains_key(name) {
                let line = section_line(&config.text, &format!("[models.{name}]"));
                return Err(Error::at(&cfg, line, format!("[models.{name}]: there is no models/{name}.sql")));
            }
        }
        let mut provided: BTreeMap<String, String> = BTreeMap::new();
        for (source, def) in &file.sources {
            for table in def.tables(source) {
                if models.contains_key(&table) || views.contains_key(&table) {
                    return Err(Error::at(
                        &cfg,
                        1,
                        format!("source {source:?} provides table {table:?}, which is also a model or a view"),
                    ));
                }
                if let Some(other) = provided.insert(table.clone(), source.clone()) {
                    return Err(Error::at(
                        &cfg,
                        1,
                        format!("table {table:?} is provided by sources {other:?} and {source:?}"),
                    ));
                }
            }
        }
        let text = &config.text;
        for (sink, def) in &file.sinks {
            let line = section_line(text, &format!("[sinks.{sink}]"));
            if let Some(name) = views.keys().find(|v| models.contains_key(*v)) {
                return Err(Error::at(&cfg, 1, format!("{name:?} is both a model and a view")));
            }
            if views.contains_key(&def.model) {
                if def.kind.as_deref() == Some("postgres") {
                    let problem = if def.changelog.is_some() {
                        Some("changelog is for file sinks (a PostgreSQL sink of a view holds its rows)")
                    } else if def.mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("append")) {
                        Some("mode = \"append\" does not keep a view: use upsert (with key) or replace")
                    } else if def.streams.is_some_and(|n| n > 1) {
                        Some("streams: a view's sink writes each transaction in one PostgreSQL transaction")
                    } else {
                        None
                    };
                    if let Some(p) = problem {
                        return Err(Error::at(&cfg, line, format!("[sinks.{sink}]: {p}")));
                    }
                }
            } else if !models.contains_key(&def.model) {
                return Err(Error::at(&cfg, line, format!("[sinks.{sink}]: model {:?} does not exist", def.model)));
            } else if def.changelog.is_some() {
                return Err(Error::at(&cfg, line, format!("[sinks.{sink}]: changelog is for the sinks of views")));
            }
            def.target(sink, &dir).map_err(|m| Error::at(&cfg, line, format!("[sinks.{sink}]: {m}")))?;
        }
        for (source, def) in &file.sources {
            if let SourceDef::Tpch { change_tables: Some(tables), .. } = def {
                if let Some(t) = tables.iter().find(|t| !TPCH_TABLES.contains(&t.as_str())) {
                    return Err(Error::at(
                        &cfg,
                        section_line(text, &format!("[sources.{source}]")),
                        format!(
                            "[sources.{source}]: change_tables: {t:?} is not a TPC-H table ({})",
                            TPCH_TABLES.join(", ")
                        ),
                    ));
                }
            }
            if let SourceDef::Tpch { sf, .. } = def {
                if !(*sf > 0.0 && *sf <= 10_000.0) {
                    let line = section_line(text, &format!("[sources.{source}]"));
                    return Err(Error::at(
                        &cfg,
                        line,
                        format!("[sources.{source}]: sf = {sf}: the scale factor must be in (0, 10000]"),
                    ));
                }
            }
            if let Some(Err(m)) = def.postgres(source) {
                return Err(Error::at(
                    &cfg,
                    section_line(text, &format!("[sources.{source}]")),
                    format!("[sources.{source}]: {m}"),
                ));
            }
        }
        let cluster = match models.values().any(|m| m.settings.engine == Engine::Ballista) {
            true => Some(file.engine.url().map_err(Error::Usage)?),
            false => None,
        };
        Ok(Project {
            dir,
            cluster,
            config_path,
            config_text: config.text.clone(),
            models,
            sources: file.sources.clone(),
            sinks: file.sinks.clone(),
            views,
        })
    }

    /// Source tables by name, with the source that provides each.
    pub fn source_tables(&self) -> BTreeMap<String, String> {
        self.sources.iter().flat_map(|(n, d)| d.tables(n).into_iter().map(move |t| (t, n.clone()))).collect()
    }
}

/// The 1-based line of a `[section]` header in `text` (1 when not found).
pub fn section_line(text: &str, header: &str) -> usize {
    text.lines().position(|l| l.trim_start().starts_with(header)).map_or(1, |i| i + 1)
}

/// The 1-based line of the first whole-word, case-insensitive occurrence of `word` in `text`.
pub fn line_of(text: &str, word: &str) -> usize {
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
