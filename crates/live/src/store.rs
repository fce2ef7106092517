//! What `views apply` keeps under `.spillway/views/`:
//!
//! ```text
//!   log/00000001.arrow   one per applied change file, in order: the transaction as the engine
//!                        applied it (the table's rows and `_weight`, deletes by key resolved to
//!                        the rows they removed), with the change file's name, size and hash in
//!                        its metadata. Written a piece at a time, synced and renamed into place
//!                        before any sink is published:
//!                        the commit point. A file is applied once, because its name is here.
//!   status.json          per view: rows, state bytes, the last change applied (for `status`)
//!   serve.json           while `views serve` runs: its pid and the address of /status
//!   report.html          the last `views serve` session's report (written when it stops)
//!   stopped.json         views stopped because a PostgreSQL table they read changed its columns
//!   writer.lock          held (flock) by the one process that may write here: its pid and command
//!   snapshot.json        the source files the views were populated from (path, size, mtime):
//!                        the logged changes were made against them, so a start refuses others
//!   cdc/<slot>/          a followed PostgreSQL slot: its snapshot (see cdc.rs)
//! ```
//!
//! The views' state is rebuilt from it when a process starts: population from the sources'
//! snapshot, then every logged transaction in order (no change file is read twice, and one
//! deleted after it was applied is not needed again).

use crate::error::{Error, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use spillway_views::ZSet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The weight column of logged transactions and of changelog sinks.
pub use spillway_views::WEIGHT_COLUMN;

/// A change file as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Position in the log (1-based).
    pub seq: u64,
    /// The table it changed.
    pub table: String,
    /// The change file, relative to the project.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Its content hash (FNV-1a).
    pub hash: String,
    /// A part of a source transaction from a PostgreSQL slot (instead of a change file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc: Option<CdcMark>,
}

/// Where a logged part of a PostgreSQL source transaction came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcMark {
    /// The slot.
    pub slot: String,
    /// The transaction's end position, on its last part (the commit); `None` on the parts
    /// before it (dropped at start when no commit follows them).
    pub end_lsn: Option<u64>,
}

/// Per view, what `status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewStatus {
    /// The view.
    pub name: String,
    /// `incremental` or `recompute`.
    pub refresh: String,
    /// Rows it holds.
    pub rows: u64,
    /// Bytes of operator state and contents (what the governor is charged).
    pub state_bytes: u64,
    /// The last change file that changed it.
    pub last_change: Option<String>,
    /// Transactions that changed it since the process started.
    #[serde(default)]
    pub transactions: u64,
    /// Rows of its changes since the process started (inserted and retracted).
    #[serde(default)]
    pub change_rows: u64,
    /// Time spent absorbing transactions since the process started, microseconds.
    #[serde(default)]
    pub busy_us: u64,
    /// Why the view is stopped (a table it reads changed its columns), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The whole of `status.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Transactions applied.
    pub applied: u64,
    /// The last change file applied.
    pub last_file: Option<String>,
    /// When it was written (RFC 3339, UTC).
    pub updated_at: String,
    /// Population time of the last process, milliseconds.
    pub populate_ms: u64,
    /// Per view.
    pub views: Vec<ViewStatus>,
    /// The PostgreSQL replication slot followed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The end of the last source transaction made durable (`0/16B3748`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_lsn: Option<String>,
}

/// What `serve.json` says of a running `views serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// Its process id.
    pub pid: u32,
    /// Its HTTP endpoint, e.g. `http://127.0.0.1:9477`.
    pub url: String,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
}

/// `.spillway/views/` of a project.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of the project in `project_dir` (its folder is made by its writer: [`Store::lock`]).
    pub fn open(project_dir: &Path) -> Result<Store> {
        // Made by the writer (`lock`): a reader writes nothing.
        Ok(Store { dir: project_dir.join(".spillway").join("views") })
    }

    fn log_path(&self, seq: u64) -> PathBuf {
        self.dir.join("log").join(format!("{seq:08}.arrow"))
    }

    /// Every logged transaction's record, in order.
    pub fn applied(&self) -> Result<Vec<Applied>> {
        let log = self.dir.join("log");
        let entries = match std::fs::read_dir(&log) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()), // none yet
            r => r.map_err(|e| Error::io(&log, e))?,
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "arrow")
                    && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            let reader = arrow::ipc::reader::FileReader::try_new(f, None).map_err(|e| corrupt(&p, e))?;
            let meta = reader.schema().metadata().get("spillway.applied").cloned().unwrap_or_default();
            let a: Applied = serde_json::from_str(&meta).map_err(|e| corrupt(&p, e))?;
            out.push(a);
        }
        Ok(out)
    }

    /// The transaction logged as `seq`, in `schema` (the table's), whole.
    pub fn read(&self, seq: u64, schema: &SchemaRef) -> Result<ZSet> {
        let parts = self.pieces(seq, schema)?.collect::<Result<Vec<_>>>()?;
        ZSet::concat(spillway_views::relax_nullability(schema), parts).map_err(|e| corrupt(&self.log_path(seq), e))
    }

    /// The transaction logged as `seq`, in `schema` (the table's), a batch at a time as it was
    /// written.
    pub fn pieces(&self, seq: u64, schema: &SchemaRef) -> Result<impl Iterator<Item = Result<ZSet>> + use<>> {
        let p = self.log_path(seq);
        let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        let reader =
            arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(f), None).map_err(|e| corrupt(&p, e))?;
        let schema = schema.clone();
        Ok(reader.map(move |b| {
            let b = b.map_err(|e| corrupt(&p, e))?;
            spillway_views::from_weighted(&b, &schema).map_err(|e| corrupt(&p, e))
        }))
    }

    /// Starts log entry `applied` for rows of `rows`: written a piece at a time beside its
    /// place, it becomes the commit point at [`LogEntry::commit`].
    pub fn begin(&self, applied: &Applied, rows: &SchemaRef) -> Result<LogEntry> {
        let path = self.log_path(applied.seq);
        let mut fields: Vec<Field> =
            spillway_views::relax_nullability(rows).fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(WEIGHT_COLUMN, DataType::Int64, false));
        let mut meta = HashMap::new();
        meta.insert("spillway.applied".to_string(), serde_json::to_string(applied).unwrap_or_default());
        let schema = Arc::new(Schema::new(fields).with_metadata(meta));
        let tmp = spillway_tiers::staging::staging_path(&path);
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let writer = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(f), &schema)
            .map_err(|e| corrupt(&path, e))?;
        Ok(LogEntry { path, tmp, schema, writer: Some(writer), rows: 0 })
    }

    /// Removes log entry `seq` (a part of a source transaction whose commit never came).
    pub fn remove(&self, seq: u64) -> Result<()> {
        let p = self.log_path(seq);
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        spillway_tiers::durable::sync_dir(&self.dir.join("log"))?;
        Ok(())
    }

    /// The views stopped by a change of a table's columns, with why (`stopped.json`).
    pub fn read_stopped(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(read_json(&self.dir.join("stopped.json"))?.unwrap_or_default())
    }

    /// Replaces `stopped.json`.
    pub fn write_stopped(&self, stopped: &std::collections::BTreeMap<String, String>) -> Result<()> {
        let text = serde_json::to_vec_pretty(stopped).unwrap_or_default();
        spillway_tiers::durable::replace_synced(&self.dir.join("stopped.json"), &text)?;
        Ok(())
    }

    /// Replaces `status.json`.
    pub fn write_status(&self, status: &Status) -> Result<()> {
        let text = serde_json::to_vec_pretty(status).unwrap_or_default();
        spillway_tiers::durable::replace_synced(&self.dir.join("status.json"), &text)?;
        Ok(())
    }

    /// Takes the store's writer lock, held until the [`WriterLock`] is dropped (or the process
    /// ends, however it ends): one `views apply` or `views serve` at a time writes the log, the
    /// slot and the sinks. Refused at once, naming the holder, when another process holds it.
    pub fn lock(&self) -> Result<WriterLock> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(self.dir.join("log")).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.dir.join("writer.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::ViewsLocked {
                    dir: self.dir.clone(),
                    holder: if holder.is_empty() { "another process".into() } else { holder.to_string() },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        // Only the subcommand: the rest of a command line may hold a password.
        let command: Vec<String> = std::env::args().take(3).collect();
        let me = format!("process {} ({})", std::process::id(), command.join(" "));
        let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(me.as_bytes()));
        written.map_err(|e| Error::io(&path, e))?;
        Ok(WriterLock { _file: Arc::new(file) })
    }

    /// The folder (`.spillway/views/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records that a `serve` process is running (`serve.json`).
    pub fn write_serving(&self, serving: &Serving) -> Result<()> {
        let text = serde_json::to_vec_pretty(serving).unwrap_or_default();
        spillway_tiers::durable::replace_synced(&self.dir.join("serve.json"), &text)?;
        Ok(())
    }

    /// Removes `serve.json` (the process is stopping).
    pub fn clear_serving(&self) -> Result<()> {
        let p = self.dir.join("serve.json");
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// `serve.json`, if a `serve` process wrote it (it may since have been killed).
    pub fn read_serving(&self) -> Result<Option<Serving>> {
        read_json(&self.dir.join("serve.json"))
    }

    /// `status.json`, if written.
    pub fn read_status(&self) -> Result<Option<Status>> {
        read_json(&self.dir.join("status.json"))
    }
}

/// One source file as the views were populated from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Its path, relative to the project.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its modification time, nanoseconds since 1970.
    pub modified_ns: u64,
}

impl FileId {
    /// `path` as it is now (`rel`: how the project names it).
    pub fn of(path: &Path, rel: String) -> Result<FileId> {
        let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(FileId { path: rel, bytes: m.len(), modified_ns })
    }
}

/// Per source table, the files the views were populated from.
pub type SnapshotId = std::collections::BTreeMap<String, Vec<FileId>>;

impl Store {
    /// Checks that the source files are those the views were populated from, for every table
    /// recorded before (when changes were logged on top of them), and records `now` (when
    /// `write`). A file rewritten, added or removed since is refused, naming it.
    pub fn check_snapshot(&self, now: &SnapshotId, logged: bool, write: bool) -> Result<()> {
        let path = self.dir.join("snapshot.json");
        let before: SnapshotId = read_json(&path)?.unwrap_or_default();
        if logged {
            for (table, files) in now {
                let Some(old) = before.get(table) else { continue };
                if old == files {
                    continue;
                }
                let what = match (old.iter().find(|f| !files.contains(f)), files.iter().find(|f| !old.contains(f))) {
                    (Some(o), Some(n)) if o.path == n.path => format!(
                        "{}: changed since the views were populated from it ({} bytes, modified at {}ns; now {} bytes, {}ns)",
                        n.path, o.bytes, o.modified_ns, n.bytes, n.modified_ns
                    ),
                    (_, Some(n)) => format!("{}: added to table {table} since the views were populated", n.path),
                    (Some(o), _) => format!("{}: removed from table {table} since the views were populated", o.path),
                    (None, None) => continue,
                };
                return Err(Error::Usage(format!(
                    "{what}: the changes logged since were made against the old one: put it back, or remove {} to \
                     populate the views from the new one",
                    self.dir.display()
                )));
            }
        }
        if write {
            let mut merged = if logged { before.clone() } else { SnapshotId::new() };
            for (t, files) in now {
                merged.insert(t.clone(), files.clone());
            }
            if merged != before {
                let text = serde_json::to_vec_pretty(&merged).unwrap_or_default();
                spillway_tiers::durable::replace_synced(&path, &text)?;
            }
        }
        Ok(())
    }
}

/// The writer lock of a views store ([`Store::lock`]): whoever holds one may write the store.
/// Clones share it; it is released when the last is dropped.
#[derive(Debug, Clone)]
pub struct WriterLock {
    _file: Arc<std::fs::File>,
}

/// A JSON file of ours, if it exists.
fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| Error::at(p, 1, format!("unreadable: {e}")))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// A log entry being written ([`Store::begin`]); removed unless committed.
pub struct LogEntry {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: Option<arrow::ipc::writer::FileWriter<std::io::BufWriter<std::fs::File>>>,
    rows: u64,
}

impl LogEntry {
    /// Appends `z`'s rows with their weights.
    pub fn write(&mut self, z: &ZSet) -> Result<()> {
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        let batch = spillway_views::with_weights(z)
            .and_then(|b| b.with_schema(self.schema.clone()))
            .map_err(|e| corrupt(&self.path, e))?;
        w.write(&batch).map_err(|e| corrupt(&self.path, e))?;
        self.rows += z.len() as u64;
        Ok(())
    }

    /// Finishes the entry, syncs it and renames it into place: the commit point.
    pub fn commit(mut self) -> Result<()> {
        let Some(mut w) = self.writer.take() else { return Ok(()) };
        w.finish().map_err(|e| corrupt(&self.path, e))?;
        let f = w.into_inner().map_err(|e| corrupt(&self.path, e))?;
        let f = f.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(f);
        spillway_tiers::durable::rename_synced(&self.tmp, &self.path)?;
        Ok(())
    }
}

impl Drop for LogEntry {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn corrupt(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::at(p, 1, format!("unreadable views log entry: {e}"))
}
