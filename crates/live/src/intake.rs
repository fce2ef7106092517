//! Change files: the files under each source's change folder not applied yet, found in name
//! order and checked against the log (an applied file is never rewritten); each read a batch at
//! a time with its table's types and applied as one transaction; the snapshot of the source
//! files the views were populated from.

use crate::error::{Error, Result};
use crate::feed::AppliedTxn;
use crate::host::Views;
use crate::publish::Publish;
use crate::store::{self, Applied};
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use spillway_project::Project;
use spillway_views::{changes, Change, Spool, ViewError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What one `apply` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyReport {
    /// Population (and replay of the log) when the process started, milliseconds.
    pub populate_ms: u64,
    /// Logged transactions replayed at start.
    pub replayed: usize,
    /// Change files applied now.
    pub applied: Vec<AppliedFile>,
    /// PostgreSQL transactions applied now (those that committed before the apply began).
    pub transactions: Vec<AppliedTxn>,
}

/// One change file applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppliedFile {
    /// The file, relative to the project.
    pub file: String,
    /// The table it changed.
    pub table: String,
    /// Change rows it held.
    pub rows: u64,
    /// Views whose contents changed.
    pub views_changed: Vec<String>,
    /// From reading the file to the sinks published, microseconds.
    pub us: u64,
    /// Time each view it reached took to absorb it, microseconds.
    pub view_us: BTreeMap<String, u64>,
    /// Bytes of its changes (the table's, the views') that went to the temp space because the
    /// lease had no room for them (0: all held in memory).
    pub spilled: u64,
}

impl Views {
    /// The change files not applied yet, in name order, with the table each changes. A file
    /// applied before whose size changed since is an error (each applied file is looked at once
    /// per process: a long-lived process does not stat its whole history at every look).
    pub fn pending(&mut self) -> Result<Vec<(String, PathBuf)>> {
        let by_table = self.project.source_tables();
        let mut found: Vec<(String, String, PathBuf)> = Vec::new();
        for t in self.schemas.keys() {
            let def = &self.project.sources[&by_table[t]];
            let Some(dir) = def.changes(t) else { continue };
            let dir = self.project.dir.join(dir);
            let mut files = Vec::new();
            files_under(&dir, &mut files);
            for f in files {
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                found.push((name, t.clone(), f));
            }
        }
        found.sort();
        let mut out = Vec::new();
        for (_, table, path) in found {
            let rel = self.relative(&path);
            if self.checked.contains(&rel) {
                continue;
            }
            if let Some(&i) = self.applied_index.get(&rel) {
                let a = &self.applied[i];
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if bytes != a.bytes {
                    return Err(Error::at(&path, 1, format!("applied as change {} with {} bytes; it now has {bytes}: change files are never rewritten, add a new one", a.seq, a.bytes)));
                }
                // Same size: the content must be the same too (read once per process).
                let (hash, _) = spillway_project::fingerprint::hash_file(&path).map_err(|e| Error::io(&path, e))?;
                if hash != a.hash {
                    return Err(Error::at(&path, 1, format!("applied as change {} with hash {}; its content is now different (hash {hash}): change files are never rewritten, add a new one", a.seq, a.hash)));
                }
                self.checked.insert(rel);
                continue;
            }
            out.push((table, path));
        }
        Ok(out)
    }

    /// The change folders of the tables the views read (those that exist).
    pub fn change_dirs(&self) -> Vec<PathBuf> {
        let by_table = self.project.source_tables();
        let mut dirs: Vec<PathBuf> = self
            .schemas
            .keys()
            .filter_map(|t| self.project.sources[&by_table[t]].changes(t))
            .map(|d| self.project.dir.join(d))
            .filter(|d| d.is_dir())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Applies every pending change file, one transaction each, publishing the views' sinks
    /// after each. `progress` hears of each file as it is applied.
    pub async fn apply(
        &mut self,
        progress: &(dyn Fn(&AppliedFile) + Sync),
        txn_progress: &(dyn Fn(&AppliedTxn) + Sync),
    ) -> Result<ApplyReport> {
        self.writable()?;
        let mut report = ApplyReport {
            populate_ms: self.populate_ms,
            replayed: self.replayed,
            applied: Vec::new(),
            transactions: Vec::new(),
        };
        self.publish_state().await?;
        for (table, path) in self.pending()? {
            let done = self.apply_file(&table, &path).await?;
            progress(&done);
            report.applied.push(done);
        }
        report.transactions = self.catch_up_cdc(txn_progress).await?;
        self.write_status()?;
        Ok(report)
    }

    /// Applies one change file of `table` (from [`Views::pending`]) as one transaction: every
    /// view, then the log entry (the commit point), then the changed views' sinks.
    pub async fn apply_file(&mut self, table: &str, path: &Path) -> Result<AppliedFile> {
        self.writable()?;
        if self.mid_transaction() {
            return Err(Error::Usage(format!(
                "{}: not applied while a PostgreSQL transaction is being applied (they never interleave)",
                path.display()
            )));
        }
        let started = Instant::now();
        let rel = self.relative(path);
        let (hash, bytes) = spillway_project::fingerprint::hash_file(path).map_err(|e| Error::io(path, e))?;
        let schema = self.schema_of(table, path)?;
        let change_err = |source: ViewError| Error::Change { file: path.to_path_buf(), error: source };
        // Read a batch at a time into a spool: kept in memory while the lease grants it, in the
        // temp space beyond; consolidated once read (a row the file deletes and inserts again,
        // in either order, is no change, wherever the engine's pieces fall).
        let rt = self.ctx.runtime_env();
        let mut spool = Spool::new(format!("table {table} (the change in {rel})"), schema.clone(), &rt);
        let mut batches = read_change_file(&self.ctx, path, &schema).await?;
        let mut rows = 0u64;
        while let Some(b) =
            batches.try_next().await.map_err(|e| Error::at(path, 1, format!("reading the change file: {e}")))?
        {
            rows += b.num_rows() as u64;
            let z = match self.apply_keyed(table, &b, &rel, path)? {
                Some(z) => z,
                None => changes::unkeyed(table, &b, &schema).map_err(change_err)?,
            };
            spool.push(z).map_err(change_err)?;
            self.charge_table(table, Some(&rel), 0)?;
        }
        drop(batches);
        let change = spool.finish().await.map_err(change_err)?;
        if change.on_disk() {
            spillway_faults::point("views-change-spilled");
        }
        self.tidy_table(table);
        self.charge_table(table, Some(&rel), 0)?;
        let changed = self.transaction(table, &change, &rel).await?;
        let applied =
            Applied { seq: self.last_seq() + 1, table: table.to_string(), file: rel.clone(), bytes, hash, cdc: None };
        self.log(&applied, &change).await?;
        spillway_faults::point("views-after-commit");
        self.applied_index.insert(rel.clone(), self.applied.len());
        self.checked.insert(rel.clone());
        self.applied.push(applied);
        self.publish(&changed, Publish::Changed, self.last_seq()).await?;
        self.write_status()?;
        Ok(AppliedFile {
            file: rel,
            table: table.to_string(),
            rows,
            views_changed: changed.keys().cloned().collect(),
            us: started.elapsed().as_micros() as u64,
            view_us: self.view_us.clone(),
            spilled: change.spilled_bytes() + changed.values().map(Change::spilled_bytes).sum::<u64>(),
        })
    }
}

/// The files each file source table among `locations` reads (a file, a folder's files, or the
/// files beside a glob with its extension), as they are now. Tables followed from PostgreSQL (`followed`: their
/// snapshot is the slot's) and generated ones are left out.
pub(crate) fn file_snapshot(
    project: &Project,
    locations: &BTreeMap<String, String>,
    followed: &BTreeSet<String>,
) -> Result<store::SnapshotId> {
    let by_table = project.source_tables();
    let mut out = store::SnapshotId::new();
    for (table, location) in locations {
        let is_file_source = by_table.get(table).is_some_and(|s| {
            matches!(
                project.sources[s],
                spillway_project::SourceDef::Parquet { .. }
                    | spillway_project::SourceDef::Csv { .. }
                    | spillway_project::SourceDef::Json { .. }
                    | spillway_project::SourceDef::Arrow { .. }
            )
        });
        if !is_file_source || followed.contains(table) {
            continue;
        }
        let path = Path::new(location);
        let mut files = Vec::new();
        if path.is_file() {
            files.push(path.to_path_buf());
        } else if path.is_dir() {
            files_under(path, &mut files);
        } else if let Some(parent) = path.parent().filter(|p| p.is_dir()) {
            // A glob (`data/*.parquet`): the files beside it with its extension (not the
            // folders under it, where change files may live).
            let ext = path.extension();
            let beside = std::fs::read_dir(parent).map_err(|e| Error::io(parent, e))?;
            files.extend(beside.flatten().map(|e| e.path()).filter(|p| {
                let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(['.', '_']));
                p.is_file() && !hidden && p.extension() == ext
            }));
        }
        files.sort();
        let ids = files
            .iter()
            .map(|f| {
                let rel = f.strip_prefix(&project.dir).unwrap_or(f).to_string_lossy().into_owned();
                store::FileId::of(f, rel)
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert(table.clone(), ids);
    }
    Ok(out)
}

/// Every file under `dir` (recursively), sorted by path.
pub(crate) fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue; // hidden, staging and marker files
        }
        // The entry's type comes with the directory listing (no stat per file), except on file
        // systems that do not give it, and for symbolic links.
        let is_dir = match e.file_type() {
            Ok(t) if t.is_symlink() => p.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => p.is_dir(),
        };
        if is_dir {
            files_under(&p, out);
        } else if spillway_tiers::FileFormat::from_path(&p).is_some() {
            out.push(p);
        }
    }
}

/// The rows of a change file (Parquet, CSV with a header, NDJSON or Arrow IPC), a batch at a
/// time, in the file's order (one partition: a large file split into ranges read side by side
/// would interleave an insert and a later upsert of the same key). A CSV file is read with the
/// types of `table`'s columns as its header names them (`_op` and columns the table does not
/// have as text, refused later by name), never inferred from its values: a text key `007` stays
/// `007`.
pub(crate) async fn read_change_file(
    views: &SessionContext,
    path: &Path,
    table: &SchemaRef,
) -> Result<datafusion::execution::SendableRecordBatchStream> {
    // A catalog of its own, on the views' settings and runtime (their pool and temp space).
    let config = views.copied_config().with_target_partitions(1);
    let ctx = SessionContext::new_with_config_rt(config, views.runtime_env());
    let location = path.to_string_lossy().into_owned();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        let header = csv_header(path)?;
        let fields: Vec<arrow::datatypes::Field> = header
            .iter()
            .map(|name| match table.field_with_name(name) {
                Ok(f) => f.as_ref().clone().with_nullable(true),
                Err(_) => arrow::datatypes::Field::new(name, arrow::datatypes::DataType::Utf8, true),
            })
            .collect();
        let schema = arrow::datatypes::Schema::new(fields);
        let options = datafusion::prelude::CsvReadOptions::new().has_header(true).schema(&schema);
        ctx.register_csv("change", &location, options).await.map_err(spillway_engine::Error::from)?;
    } else {
        spillway_engine::tables::register(&ctx, "change", &location).await?;
    }
    let frame = ctx.table("change").await.map_err(spillway_engine::Error::from)?;
    Ok(frame.execute_stream().await.map_err(spillway_engine::Error::from)?)
}

/// The column names in the header line of CSV file `path`, as the CSV reader parses them
/// (quoted names included); no row is read.
pub(crate) fn csv_header(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let (schema, _) = arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(std::io::BufReader::new(f), Some(0))
        .map_err(|e| Error::at(path, 1, format!("the change file's header line: {e}")))?;
    if schema.fields().is_empty() {
        return Err(Error::at(path, 1, "the change file has no header line"));
    }
    Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
}
