//! Source tables: where each one's data is, making sure it exists before any work starts
//! (generating a `tpch` source's data once, cached in the project), and registering it in a
//! model's session.

use crate::error::{Error, Result};
use crate::project::{line_of, section_line, Project, SourceDef};
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use spillway_engine::{tables, tpch};
use spillway_postgres::PgTable;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Marks a complete generated data folder (written last).
const COMPLETE: &str = "_SUCCESS";

/// Where the data of every source table is: a file, a folder or a glob, or a PostgreSQL table.
#[derive(Debug, Clone, Default)]
pub struct SourceTables {
    /// Table name → location (a path or glob, as DataFusion's listing tables take it).
    pub locations: BTreeMap<String, String>,
    /// Table name → PostgreSQL table or query (columns read once, when the run starts).
    pub postgres: BTreeMap<String, Arc<PgTable>>,
}

impl SourceTables {
    /// Registers `table` in `ctx`.
    pub async fn register(&self, ctx: &SessionContext, table: &str) -> Result<()> {
        if let Some(pg) = self.postgres.get(table) {
            let provider: Arc<dyn TableProvider> = pg.clone();
            ctx.register_table(table, provider).map_err(spillway_engine::Error::from)?;
            return Ok(());
        }
        let location =
            self.locations.get(table).ok_or_else(|| Error::Usage(format!("source table {table:?} has no data")))?;
        tables::register(ctx, table, location).await?;
        Ok(())
    }
}

/// The folder a `tpch` source at scale factor `sf` is generated into and read from.
pub fn tpch_dir(project: &Project, sf: f64) -> PathBuf {
    project.dir.join(".spillway").join("data").join(format!("tpch-sf{sf}"))
}

/// Whether the generated data at `dir` is complete.
pub fn is_generated(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

/// The line of `[sources.NAME]` in the project's `spillway.toml` (1 when not found).
pub fn source_line(project: &Project, name: &str) -> (PathBuf, usize) {
    let path = project.config_path.clone().unwrap_or_else(|| project.dir.join("spillway.toml"));
    let text = &project.config_text;
    let line = match section_line(text, &format!("[sources.{name}]")) {
        1 => line_of(text, name),
        n => n,
    };
    (path, line)
}

/// File sources whose path does not exist, as errors at their line in `spillway.toml`.
pub fn missing_files(project: &Project) -> Vec<Error> {
    let mut problems = Vec::new();
    for (name, def) in &project.sources {
        let path = match def {
            SourceDef::Parquet { path, .. }
            | SourceDef::Csv { path, .. }
            | SourceDef::Json { path, .. }
            | SourceDef::Arrow { path, .. } => project.dir.join(path),
            SourceDef::Tpch { .. } | SourceDef::Postgres { .. } => continue,
        };
        let text = path.to_string_lossy();
        let exists = match text.find(['*', '?', '[']) {
            // A glob: the folder before its first wildcard must exist.
            Some(pos) => Path::new(&text[..pos]).parent().is_some_and(|d| d.is_dir()),
            None => path.exists(),
        };
        if !exists {
            let (file, line) = source_line(project, name);
            problems.push(Error::at(file, line, format!("[sources.{name}]: {} does not exist", path.display())));
        }
    }
    problems
}

/// How `tpch` data is generated.
#[derive(Debug, Clone, Default)]
pub enum Generator {
    /// In this process. tpchgen keeps a ~300MiB text pool in a static for the rest of the
    /// process's life, which a run under a small budget cannot afford.
    #[default]
    InProcess,
    /// By running `EXE gen tpch --sf N --out DIR` (the `spillway` binary), so that memory goes
    /// away with the child. Its progress bar (on stderr) shows through.
    Command(PathBuf),
}

/// Locations of the source tables in `needed`, generating `tpch` data first where it is not
/// cached yet (`progress` gets rows as they are written; `threads` generate in parallel).
pub fn prepare(
    project: &Project,
    needed: &[String],
    threads: usize,
    generator: &Generator,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> Result<SourceTables> {
    let mut locations = BTreeMap::new();
    let by_table = project.source_tables();
    for table in needed {
        let Some(source) = by_table.get(table) else { continue };
        let def = &project.sources[source];
        let location = match def {
            SourceDef::Tpch { sf, .. } => {
                let dir = tpch_dir(project, *sf);
                ensure_tpch(&dir, *sf, threads, generator, &|rows, total| progress(source, rows, total))?;
                dir.join(table)
            }
            SourceDef::Parquet { path, .. }
            | SourceDef::Csv { path, .. }
            | SourceDef::Json { path, .. }
            | SourceDef::Arrow { path, .. } => project.dir.join(path),
            SourceDef::Postgres { .. } => continue,
        };
        locations.insert(table.clone(), location.to_string_lossy().into_owned());
    }
    Ok(SourceTables { locations, postgres: BTreeMap::new() })
}

/// Opens the `postgres` sources among `needed` (reading their columns); errors name the source
/// and its line in `spillway.toml`.
pub async fn open_postgres(project: &Project, needed: &[String]) -> Result<BTreeMap<String, Arc<PgTable>>> {
    let by_table = project.source_tables();
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for table in needed {
        let Some(source) = by_table.get(table) else { continue };
        let Some(spec) = project.sources[source].postgres(source) else { continue };
        let opened = match spec {
            Ok(spec) => PgTable::open(&spec).await.map_err(|e| e.to_string()),
            Err(m) => Err(m),
        };
        match opened {
            Ok(t) => {
                out.insert(table.clone(), Arc::new(t));
            }
            Err(m) => {
                let (cfg, line) = source_line(project, source);
                problems.push(Error::at(cfg, line, format!("[sources.{source}]: {m}")));
            }
        }
    }
    match Error::many(problems) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Makes sure `dir` holds complete TPC-H data at scale factor `sf` (the `_SUCCESS` marker),
/// generating it with `generator` otherwise. In-process generation reports `(rows, total)` to
/// `progress`; a child process shows its own progress bar.
pub fn ensure_tpch(
    dir: &Path,
    sf: f64,
    threads: usize,
    generator: &Generator,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    if is_generated(dir) {
        return Ok(());
    }
    match generator {
        Generator::InProcess => generate_tpch(dir, sf, threads, progress),
        Generator::Command(exe) => generate_tpch_child(exe, dir, sf),
    }
}

fn generate_tpch_child(exe: &Path, dir: &Path, sf: f64) -> Result<()> {
    tracing::info!(dir = %dir.display(), sf, "generating TPC-H data in a child process");
    let status = std::process::Command::new(exe)
        .args(["gen", "tpch", "--sf", &sf.to_string(), "--out"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| Error::io(exe, e))?;
    if !status.success() {
        return Err(Error::at(dir, 1, format!("generating TPC-H sf{sf} failed ({status})")));
    }
    mark_generated(dir, sf)
}

fn mark_generated(dir: &Path, sf: f64) -> Result<()> {
    let marker = dir.join(COMPLETE);
    std::fs::write(&marker, format!("TPC-H sf{sf}\n")).map_err(|e| Error::io(&marker, e))
}

fn generate_tpch(dir: &Path, sf: f64, threads: usize, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<()> {
    let total: u64 = tpch::TABLES.iter().map(|t| tpch::expected_rows(t, sf)).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    tracing::info!(dir = %dir.display(), sf, "generating TPC-H data");
    tpch::generate(sf, dir, threads, &|rows| {
        let now = done.fetch_add(rows, std::sync::atomic::Ordering::Relaxed) + rows;
        progress(now, total);
    })?;
    mark_generated(dir, sf)
}
