//! The run manifest: what a run has finished, durably, so that a later `spillway run --resume`
//! (or `spillway retry`) knows what it may reuse after a failure or a kill.
//!
//! ```text
//!   .spillway/runs/<run id>/manifest.json      replaced (staged, fsync'd, renamed) after every model
//!     { run_id, select, finished,
//!       models: { NAME: { fingerprint: {total, sql, settings, upstream, sources},
//!                         status, tier, kept: {path, bytes, mtime_ns}?,
//!                         sinks: [{name, file: {path, bytes, mtime_ns}? | postgres: "target"}],
//!                         reused_from? } } }
//!   .spillway/state/<model>.parquet            a `checkpoint = true` model's output, kept
//! ```
//!
//! A model's fingerprint is a hash of its SQL, its settings, its upstream models' fingerprints
//! and the identity of the sources it reads: each file's size and modification time, a TPC-H
//! source's scale factor, a PostgreSQL table's oid, relfilenode and change counters. A
//! PostgreSQL *query* source has no identity, so a model reading one is never reused.

use crate::error::{Error, Result};
use crate::results::Status;
use serde::{Deserialize, Serialize};
use spillway_project::dag::Dag;
use spillway_project::fingerprint::hash;
use spillway_project::{Project, SourceDef};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file name of a run's manifest.
pub const MANIFEST: &str = "manifest.json";

/// A model's fingerprint and its parts (so `plan --resume` can say what changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Of everything below.
    pub total: String,
    /// Of the SQL text.
    pub sql: String,
    /// Of the resolved settings.
    pub settings: String,
    /// Of the upstream models' fingerprints.
    pub upstream: String,
    /// Of the sources read; `None` when one cannot be fingerprinted (a PostgreSQL query).
    pub sources: Option<String>,
}

impl Fingerprint {
    /// What differs from `before`, in words (empty when nothing does).
    pub fn changes(&self, before: &Fingerprint) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.sql != before.sql {
            out.push("its SQL");
        }
        if self.settings != before.settings {
            out.push("its settings");
        }
        if self.upstream != before.upstream {
            out.push("an upstream model");
        }
        if self.sources != before.sources || self.sources.is_none() {
            out.push("its sources");
        }
        out
    }
}

/// A file as it was when recorded: reused only if it is still the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of `path` now (`None` if it is not a file).
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Some(FileStamp { path: path.to_path_buf(), bytes: m.len(), mtime_ns })
    }

    /// Whether the file is still as recorded.
    pub fn intact(&self) -> bool {
        FileStamp::of(&self.path).as_ref() == Some(self)
    }
}

/// A published sink, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkRecord {
    /// Sink name.
    pub name: String,
    /// A file sink's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStamp>,
    /// A PostgreSQL sink's target (`user@host:port/db schema.table`), committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
}

/// One model in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Its fingerprint when it ran.
    pub fingerprint: Fingerprint,
    /// How it ended.
    pub status: Status,
    /// Where its output went (`memory`, `ipc`, `parquet`, `sink`, `check`).
    pub tier: Option<String>,
    /// Rows of output.
    #[serde(default)]
    pub rows: u64,
    /// Its output, kept beyond the run (`checkpoint = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<FileStamp>,
    /// Sinks it published.
    #[serde(default)]
    pub sinks: Vec<SinkRecord>,
    /// The run that computed it, when this run reused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The run.
    pub run_id: String,
    /// The selection it ran (`None`: every model).
    pub select: Option<String>,
    /// Whether the run got to its end (false: it failed early, was interrupted or killed).
    pub finished: bool,
    /// Finished models.
    pub models: BTreeMap<String, ModelRecord>,
}

impl Manifest {
    /// Reads a run folder's manifest.
    pub fn read(run_dir: &Path) -> Result<Manifest> {
        let path = run_dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::at(&path, e.line(), e.to_string()))
    }

    /// The newest run of `project_dir` that left a manifest (a killed run included), if any.
    pub fn latest(project_dir: &Path) -> Option<Manifest> {
        let runs = crate::results::runs_dir(project_dir);
        let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&runs)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter_map(|p| {
                let m = std::fs::metadata(p.join(MANIFEST)).ok()?;
                Some((m.modified().ok()?, p))
            })
            .collect();
        dirs.sort();
        dirs.into_iter().rev().find_map(|(_, p)| Manifest::read(&p).ok())
    }
}

/// Keeps a run's manifest on disk, replaced durably after every change.
#[derive(Debug)]
pub struct ManifestWriter {
    path: PathBuf,
    manifest: Mutex<Manifest>,
}

impl ManifestWriter {
    /// Starts `run_dir/manifest.json` with `manifest` (written at once).
    pub fn create(run_dir: &Path, manifest: Manifest) -> Result<ManifestWriter> {
        let w = ManifestWriter { path: run_dir.join(MANIFEST), manifest: Mutex::new(manifest) };
        w.write()?;
        Ok(w)
    }

    /// Records a finished model.
    pub fn record(&self, name: &str, record: ModelRecord) -> Result<()> {
        self.manifest.lock().unwrap_or_else(|e| e.into_inner()).models.insert(name.to_string(), record);
        self.write()
    }

    /// Marks the run as having got to its end.
    pub fn finish(&self) -> Result<()> {
        self.manifest.lock().unwrap_or_else(|e| e.into_inner()).finished = true;
        self.write()
    }

    fn write(&self) -> Result<()> {
        let m = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        let text = serde_json::to_vec_pretty(&*m).map_err(|e| Error::at(&self.path, 1, e.to_string()))?;
        spillway_tiers::durable::replace_synced(&self.path, &text)?;
        Ok(())
    }
}

/// Where a `checkpoint = true` model's output is kept: `.spillway/state/<model>.parquet`.
pub fn state_path(project_dir: &Path, model: &str) -> PathBuf {
    let safe: String =
        model.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    project_dir.join(".spillway").join("state").join(format!("{safe}.parquet"))
}

/// What identifies a source's data now, per source name (`None`: cannot be identified).
pub fn source_identities(project: &Project, postgres: &BTreeMap<String, String>) -> BTreeMap<String, Option<String>> {
    project
        .sources
        .iter()
        .map(|(name, def)| {
            let id = match def {
                SourceDef::Tpch { sf, .. } => Some(format!("tpch sf{sf}")),
                SourceDef::Parquet { path, .. }
                | SourceDef::Csv { path, .. }
                | SourceDef::Json { path, .. }
                | SourceDef::Arrow { path, .. } => Some(files_identity(&project.dir.join(path))),
                SourceDef::Postgres { .. } => postgres.get(name).cloned(),
            };
            (name.clone(), id.map(|i| format!("{def:?} {i}")))
        })
        .collect()
}

/// Every file under `path` (a file, a folder, or the folder before a glob's first wildcard) with
/// its size and modification time.
fn files_identity(path: &Path) -> String {
    let text = path.to_string_lossy();
    let root = match text.find(['*', '?', '[']) {
        Some(pos) => Path::new(&text[..pos]).parent().map(Path::to_path_buf).unwrap_or_default(),
        None => path.to_path_buf(),
    };
    let mut files = Vec::new();
    collect_files(&root, &mut files);
    files.sort();
    files
        .iter()
        .filter_map(|f| FileStamp::of(f).map(|s| format!("{} {} {}", f.display(), s.bytes, s.mtime_ns)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if let Ok(rd) = std::fs::read_dir(path) {
                for e in rd.filter_map(|e| e.ok()) {
                    collect_files(&e.path(), out);
                }
            }
        }
        Ok(_) => out.push(path.to_path_buf()),
        Err(_) => {}
    }
}

/// Every model's fingerprint against the sources as they are now (`postgres`: the opened
/// PostgreSQL source tables, by table name, which is their source's name).
pub fn fingerprints_now(
    project: &Project,
    dag: &Dag,
    postgres: &BTreeMap<String, std::sync::Arc<spillway_postgres::PgTable>>,
) -> BTreeMap<String, Fingerprint> {
    let pg: BTreeMap<String, String> =
        postgres.iter().filter_map(|(t, p)| p.identity().map(|i| (t.clone(), i.to_string()))).collect();
    fingerprints(project, dag, &source_identities(project, &pg))
}

/// Every model's fingerprint, upstream first.
pub fn fingerprints(
    project: &Project,
    dag: &Dag,
    sources: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Fingerprint> {
    let by_table = project.source_tables();
    let mut out: BTreeMap<String, Fingerprint> = BTreeMap::new();
    for name in &dag.order {
        let model = &project.models[name];
        let sql = hash(&[model.sql.as_bytes()]);
        let settings = hash(&[format!("{:?}", model.settings).as_bytes()]);
        let ups: Vec<String> = dag.upstream[name]
            .iter()
            .map(|u| format!("{u}={}", out.get(u).map_or("?", |f| f.total.as_str())))
            .collect();
        let upstream = hash(&[ups.join(",").as_bytes()]);
        let mut ids = Vec::new();
        let mut identified = true;
        for table in &dag.sources[name] {
            let source = by_table.get(table).cloned().unwrap_or_default();
            match sources.get(&source).cloned().flatten() {
                Some(id) => ids.push(format!("{table}: {id}")),
                None => identified = false,
            }
        }
        let sources = identified.then(|| hash(&[ids.join("\n").as_bytes()]));
        let total = hash(&[
            sql.as_bytes(),
            settings.as_bytes(),
            upstream.as_bytes(),
            sources.as_deref().unwrap_or("none").as_bytes(),
        ]);
        out.insert(name.clone(), Fingerprint { total, sql, settings, upstream, sources });
    }
    out
}
