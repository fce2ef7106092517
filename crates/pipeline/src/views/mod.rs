//! `spillway views`: a project's `views/*.sql` kept exactly up to date from the change files of
//! its sources, with the engine of `spillway-views`.
//!
//! ```text
//!   Views::open     sources prepared and registered; views planned and populated in
//!                   dependency order (a view may read views); logged transactions replayed
//!   Views::apply    every change file not yet applied, in name order, one transaction each:
//!                   read ─▶ Z-set (keys resolved) ─▶ every view in order ─▶ log entry (commit)
//!                   ─▶ the changed views' sinks published together
//!   store.rs        .spillway/views/: the log of applied transactions, status.json
//!   serve.rs        `views serve`: the long-lived loop, its snapshot, `/metrics` text
//!   cdc.rs          sources followed through PostgreSQL logical replication: the slot, its
//!                   snapshot; `Views::apply_cdc` applies a source transaction in parts of at
//!                   most `PART_ROWS` rows (each logged), publishes at its commit, then tells
//!                   the slot the position is durable
//! ```

pub mod cdc;
pub mod serve;
mod store;

pub use store::{Applied, CdcMark, Serving, Status, Store, ViewStatus, WriterLock, WEIGHT_COLUMN};

/// How a process opens a project's views.
#[derive(Debug)]
pub enum Access {
    /// As their one writer (`views apply`, `views serve`), holding the store's lock
    /// ([`Store::lock`]): it applies changes, logs them, publishes sinks, makes the slot.
    Write(WriterLock),
    /// To read them (`views explain`, the SQL shell): the log is replayed in memory, nothing is
    /// written, no slot or publication is made.
    Read,
}

use crate::error::{Error, Result};
use crate::project::{line_of, Project, Refresh, ViewDef};
use crate::sources::{self, Generator};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use spillway_postgres::cdc::{CdcEvent, CdcStream, Identity};
use spillway_postgres::view_sink::{self, Publication, ViewSink};
use spillway_views::changes::{self, KeyedTable};
use spillway_views::{Arrangement, Change, Deltas, RowCodec, Spool, View, ViewError, ZSet};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Which sinks [`Views::publish`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Every view's contents sinks (after population and replay).
    AllContents,
    /// The changed views' contents and changelog sinks (after a transaction).
    Changed,
    /// Only the changelog files of a replayed transaction that are missing.
    Changelogs,
}

/// A view recomputed after every transaction that changes what it reads.
struct Recomputed {
    sql: String,
    tables: BTreeSet<String>,
    codec: RowCodec,
    /// Its rows with their multiplicity (one empty key).
    contents: Arrangement,
    rows: RecordBatch,
}

enum Live {
    Incremental(Box<View>),
    Recompute(Box<Recomputed>),
}

/// A table's current rows with their multiplicity (for views recomputed from it).
struct Current {
    codec: RowCodec,
    schema: SchemaRef,
    /// Its rows with their multiplicity (one empty key).
    rows: Arrangement,
}

impl Current {
    fn apply(&mut self, z: &ZSet) -> std::result::Result<(), ViewError> {
        let z = z.clone().with_schema(self.schema.clone())?;
        let rows = self.codec.encode_batch(&z.batch)?;
        for (i, r) in rows.iter().enumerate() {
            self.rows.add(&[], r.as_ref(), z.weights[i]);
            let c = self.rows.weight(&[], r.as_ref());
            if c < 0 {
                self.rows.add(&[], r.as_ref(), -c);
            }
        }
        Ok(())
    }

    /// What applying `z` may allocate (reserved before it is applied).
    fn growth(&self, z: &ZSet) -> usize {
        let added = z.weights.iter().filter(|w| **w > 0).count();
        self.rows.growth(added, if added > 0 { z.slice_bytes() } else { 0 })
    }

    fn batch(&self) -> std::result::Result<RecordBatch, ViewError> {
        self.codec.decode(self.rows.rows())
    }
}

/// The live views of a project.
pub struct Views {
    project: Project,
    ctx: SessionContext,
    order: Vec<String>,
    live: BTreeMap<String, Live>,
    schemas: BTreeMap<String, SchemaRef>,
    keyed: BTreeMap<String, KeyedTable>,
    current: BTreeMap<String, Current>,
    reservations: BTreeMap<String, MemoryReservation>,
    store: Store,
    applied: Vec<Applied>,
    last_change: BTreeMap<String, String>,
    populate_ms: u64,
    replayed: usize,
    published_once: bool,
    /// Per view, microseconds the last transaction took in it.
    view_us: BTreeMap<String, u64>,
    /// Per view, what has reached it since the process started.
    counts: BTreeMap<String, Counts>,
    /// Position in `applied` of each applied change file (relative path).
    applied_index: HashMap<String, usize>,
    /// Applied change files already looked at by `pending` in this process.
    checked: HashSet<String>,
    /// The PostgreSQL slot the views follow, if any source has `cdc = true`.
    feed: Option<Feed>,
    /// Views stopped by a change to a table they read (its columns changed), with why.
    stopped: BTreeMap<String, String>,
    /// The store's writer lock; `None` when opened to read ([`Access::Read`]).
    writer: Option<WriterLock>,
    /// Open connections of the views' PostgreSQL sinks, by sink name.
    pg_sinks: BTreeMap<String, ViewSink>,
    /// Tables (and views) that never change: sources without a change feed, and views that
    /// read only such. Views' joins keep no state for the side opposite them.
    unchanging: BTreeSet<String>,
}

/// A followed slot and the source transaction being applied.
struct Feed {
    slot: cdc::Slot,
    stream: Option<CdcStream>,
    /// The end of the last source transaction logged whole.
    durable: u64,
    /// The transaction's latest part, applied at the next event (so that its last part is
    /// logged as the commit).
    held: Option<(String, ZSet)>,
    /// What the transaction's parts changed so far, per view (spilled when the lease refuses it).
    changed: BTreeMap<String, Spool>,
    rows: u64,
    started: Option<Instant>,
}

impl Feed {
    /// The name of the slot's table `index` (as the stream numbers them).
    fn table_name(&self, index: usize) -> Result<String> {
        self.slot.tables.get(index).map(|t| t.name.clone()).ok_or_else(|| {
            Error::Usage(format!(
                "slot {}: the stream named table #{index}, which it does not follow",
                self.slot.spec.slot
            ))
        })
    }
}

/// One source transaction from PostgreSQL, applied and published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppliedTxn {
    /// Its end position.
    pub end_lsn: u64,
    /// When it committed in PostgreSQL, microseconds since 1970.
    pub commit_us: i64,
    /// Change rows.
    pub rows: u64,
    /// Parts it was applied in.
    pub parts: u64,
    /// Views whose contents changed.
    pub views_changed: Vec<String>,
    /// From its first change read to its sinks published, microseconds.
    pub us: u64,
    /// Bytes of the views' changes over its parts that went to the temp space (0: all held in
    /// memory).
    pub spilled: u64,
}

/// What has reached one view since the process started.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Transactions that changed it.
    transactions: u64,
    /// Rows of its changes (inserted and retracted).
    change_rows: u64,
    /// Time spent absorbing transactions, microseconds.
    busy_us: u64,
}

/// The views and source tables a view reads.
fn references(
    project: &Project,
    view: &ViewDef,
    sources: &BTreeMap<String, String>,
) -> Result<(Vec<String>, Vec<String>)> {
    let tables = crate::dag::tables_read(&view.path, &view.sql, "view")?;
    let (mut ups, mut srcs) = (BTreeSet::new(), BTreeSet::new());
    for t in tables {
        let name = t.table().to_string();
        if name == view.name {
            return Err(Error::Cycle(format!("view {} reads itself ({})", view.name, view.path.display())));
        } else if project.views.contains_key(&name) {
            ups.insert(name);
        } else if sources.contains_key(&name) {
            srcs.insert(name);
        } else {
            let known: Vec<&str> = project.views.keys().chain(sources.keys()).map(|s| s.as_str()).collect();
            return Err(Error::at(
                &view.path,
                line_of(&view.sql, &name),
                format!("unknown table `{name}`: not a view or a source table (known: {})", known.join(", ")),
            ));
        }
    }
    Ok((ups.into_iter().collect(), srcs.into_iter().collect()))
}

/// The line of `sql` where the refused operator most likely is.
fn refusal_line(sql: &str, err: &ViewError) -> usize {
    let ViewError::Unsupported { operator, reason } = err else { return 1 };
    let lower = sql.to_ascii_lowercase();
    let keyword = match operator.as_str() {
        "Window" => Some("over"),
        "Limit" => Some("limit"),
        "Unnest" => Some("unnest"),
        "RecursiveQuery" => Some("recursive"),
        _ => None,
    };
    let words = reason.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.len() > 2);
    for w in keyword.into_iter().map(str::to_string).chain(words.map(|w| w.to_ascii_lowercase())) {
        if lower.contains(&w) {
            return line_of(sql, &w);
        }
    }
    1
}

/// The files each file source table among `locations` reads (a file, a folder's files, or the
/// files beside a glob with its extension), as they are now. Tables followed from PostgreSQL (`followed`: their
/// snapshot is the slot's) and generated ones are left out.
fn file_snapshot(
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
                crate::project::SourceDef::Parquet { .. }
                    | crate::project::SourceDef::Csv { .. }
                    | crate::project::SourceDef::Json { .. }
                    | crate::project::SourceDef::Arrow { .. }
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
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
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

impl Views {
    /// Opens the views of `project` on `ctx` (whose memory pool their state is charged to):
    /// prepares and registers the sources they read, plans and populates every view, and
    /// replays the transactions already applied. `populated(done, total)` hears of each view
    /// populated.
    pub async fn open(
        project: &Project,
        ctx: SessionContext,
        threads: usize,
        generator: &Generator,
        access: Access,
        populated: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Views> {
        let started = Instant::now();
        let writer = match access {
            Access::Write(lock) => Some(lock),
            Access::Read => None,
        };
        if project.views.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no views: add one SELECT per file as views/NAME.sql",
                project.dir.display()
            )));
        }
        let source_tables = project.source_tables();
        let mut upstream = BTreeMap::new();
        let mut needed = BTreeSet::new();
        let mut problems = Vec::new();
        for def in project.views.values() {
            match references(project, def, &source_tables) {
                Ok((ups, srcs)) => {
                    needed.extend(srcs);
                    upstream.insert(def.name.clone(), ups);
                }
                Err(e) => problems.push(e),
            }
        }
        if let Some(e) = Error::many(problems) {
            return Err(e);
        }
        let order = crate::dag::topological(&upstream)?;
        let needed: Vec<String> = needed.into_iter().collect();
        let (p, n) = (project.clone(), needed.clone());
        let generator = generator.clone();
        let mut tables =
            tokio::task::spawn_blocking(move || sources::prepare(&p, &n, threads, &generator, &|_, _, _| {}))
                .await
                .map_err(|e| Error::Usage(format!("preparing sources failed: {e}")))??;
        let cdc_spec = cdc::spec_of(project, &needed)?;
        let followed: BTreeSet<String> =
            cdc_spec.iter().flat_map(|s| s.tables.iter().map(|(t, _)| t.clone())).collect();
        let read_live: Vec<String> = needed.iter().filter(|t| !followed.contains(*t)).cloned().collect();
        tables.postgres = sources::open_postgres(project, &read_live).await?;
        let store = Store::open(&project.dir)?;
        let slot = match cdc_spec {
            Some(spec) => {
                let slot = cdc::open(store.dir(), spec, writer.is_some()).await?;
                for (t, p) in &slot.snapshots {
                    tables.locations.insert(t.clone(), p.to_string_lossy().into_owned());
                }
                Some(slot)
            }
            None => None,
        };
        let mut schemas = BTreeMap::new();
        for t in &needed {
            tables.register(&ctx, t).await?;
            let provider = ctx.table_provider(t.as_str()).await.map_err(spillway_engine::Error::from)?;
            schemas.insert(t.clone(), provider.schema());
        }
        let mut views = Views {
            project: project.clone(),
            ctx,
            order: order.clone(),
            live: BTreeMap::new(),
            schemas,
            keyed: BTreeMap::new(),
            current: BTreeMap::new(),
            reservations: BTreeMap::new(),
            applied: store.applied()?,
            store,
            last_change: BTreeMap::new(),
            populate_ms: 0,
            replayed: 0,
            published_once: false,
            view_us: BTreeMap::new(),
            counts: BTreeMap::new(),
            applied_index: HashMap::new(),
            checked: HashSet::new(),
            feed: slot.map(|slot| Feed {
                durable: slot.consistent_lsn,
                slot,
                stream: None,
                held: None,
                changed: BTreeMap::new(),
                rows: 0,
                started: None,
            }),
            stopped: BTreeMap::new(),
            pg_sinks: BTreeMap::new(),
            unchanging: BTreeSet::new(),
            writer,
        };
        // What can change: sources with change files or a followed slot, and the views that
        // read them (in dependency order).
        let by_table = project.source_tables();
        let mut changing: BTreeSet<String> = needed
            .iter()
            .filter(|t| followed.contains(*t) || project.sources[&by_table[*t]].changes(t).is_some())
            .cloned()
            .collect();
        for name in &order {
            let (ups, srcs) = references(project, &project.views[name], &source_tables)?;
            if ups.iter().chain(srcs.iter()).any(|t| changing.contains(t)) {
                changing.insert(name.clone());
            }
        }
        views.unchanging = needed.iter().chain(order.iter()).filter(|t| !changing.contains(*t)).cloned().collect();
        views.stopped = views.store.read_stopped()?;
        // Parts of a source transaction whose commit never came (a crash; or, in a log written
        // before change files waited for a transaction's end, with a change file after them) are
        // dropped wherever they sit: PostgreSQL sends the transaction again, whole, from the slot.
        let is_part = |a: &Applied| a.cdc.as_ref().is_some_and(|c| c.end_lsn.is_none());
        let last_commit = views.applied.iter().rposition(|a| a.cdc.as_ref().is_some_and(|c| c.end_lsn.is_some()));
        let uncommitted: Vec<u64> = views
            .applied
            .iter()
            .enumerate()
            .filter(|(i, a)| is_part(a) && last_commit.is_none_or(|c| *i > c))
            .map(|(_, a)| a.seq)
            .collect();
        views.applied.retain(|a| !uncommitted.contains(&a.seq));
        if views.writer.is_some() {
            for seq in uncommitted {
                views.store.remove(seq)?;
            }
        }
        views.applied_index = views.applied.iter().enumerate().map(|(i, a)| (a.file.clone(), i)).collect();
        let snapshot = file_snapshot(project, &tables.locations, &followed)?;
        let logged = views.applied.iter().any(|a| a.cdc.is_none());
        views.store.check_snapshot(&snapshot, logged, views.writer.is_some())?;
        views.load_tables(&needed).await?;
        for (i, name) in order.iter().enumerate() {
            let t = Instant::now();
            views.populate(&project.views[name]).await?;
            // What the population's queries freed goes back to the system before the next view
            // populates: kept as jemalloc's dirty pages, it would count as untracked memory and
            // narrow the lease the next views grow in.
            spillway_governor::jemalloc::purge_all_arenas();
            let state = views.live.get(name).map_or(0, state_bytes);
            tracing::info!(view = %name, ms = t.elapsed().as_millis() as u64, state_bytes = state, "view populated");
            populated(i + 1, order.len());
        }
        // Every view is populated: the copies of their contents registered for the views that
        // read them (which plan and populate against them, and only then) are dropped; each
        // name stays registered, empty, with its schema. Recomputed views read the live
        // contents, not these.
        for name in &order {
            let schema = views.live.get(name).map(|l| match l {
                Live::Incremental(v) => v.schema(),
                Live::Recompute(r) => r.rows.schema(),
            });
            if let Some(schema) = schema {
                views.register_view(name, RecordBatch::new_empty(schema))?;
            }
        }
        // Rebuild the state of what was applied before: the log, in order, each entry a batch
        // at a time as it was written (each batch part of a consolidated change: applied one
        // after another, they give what the whole gave); each view's change in a spool, for
        // the changelog files a crash may have left unwritten.
        let rt = views.ctx.runtime_env();
        let mut spools: BTreeMap<String, Spool> = BTreeMap::new();
        for a in views.applied.clone() {
            let schema = views.schema_of(&a.table, Path::new(&a.file))?;
            let change_err = |source: ViewError| Error::Change { file: a.file.clone().into(), error: source };
            for z in views.store.pieces(a.seq, &schema)? {
                let z = z?;
                if let Some(ahead) = views.keyed.get(&a.table).map(|k| k.absorb_growth(&z)) {
                    views.charge_table(&a.table, Some(&a.file), ahead)?;
                    if let Some(k) = views.keyed.get_mut(&a.table) {
                        k.absorb(&z).map_err(change_err)?;
                    }
                    views.charge_table(&a.table, Some(&a.file), 0)?;
                }
                let changed = views.transaction(&a.table, &Change::memory(z), &a.file).await?;
                keep(&mut spools, changed, &rt).await.map_err(change_err)?;
            }
            if let Some(end) = a.cdc.as_ref().map(|c| c.end_lsn) {
                match end {
                    None => continue, // more parts of this source transaction follow
                    Some(lsn) => {
                        if let Some(f) = views.feed.as_mut() {
                            f.durable = lsn;
                        }
                    }
                }
            }
            // A crash between the commit and the publication leaves this transaction's
            // changelog files unwritten: write those that are missing.
            let changed = finish_all(std::mem::take(&mut spools)).await.map_err(change_err)?;
            if views.writer.is_some() {
                views.publish(&changed, Publish::Changelogs, a.seq).await?;
            }
            views.replayed += 1;
        }
        views.populate_ms = started.elapsed().as_millis() as u64;
        Ok(views)
    }

    fn schema_of(&self, table: &str, file: &Path) -> Result<SchemaRef> {
        self.schemas.get(table).cloned().ok_or_else(|| {
            Error::at(
                file,
                1,
                format!("changes to table {table}, which no view reads (or which is no longer a source)"),
            )
        })
    }

    /// Keyed tables' rows, and current rows of tables read by recomputed views.
    async fn load_tables(&mut self, needed: &[String]) -> Result<()> {
        let recompute_reads: BTreeSet<String> = self
            .project
            .views
            .values()
            .filter(|v| v.refresh == Refresh::Recompute)
            .flat_map(|v| references(&self.project, v, &self.project.source_tables()).map(|r| r.1).unwrap_or_default())
            .collect();
        let by_table = self.project.source_tables();
        for t in needed {
            let def = &self.project.sources[&by_table[t]];
            let schema = self.schemas[t].clone();
            let identity = self
                .feed
                .as_ref()
                .and_then(|f| f.slot.tables.iter().find(|c| &c.name == t))
                .map(|c| c.identity.clone());
            let keyed: Option<Vec<String>> = match &identity {
                Some(Identity::Key(k)) => Some(k.clone()),
                Some(Identity::Full) => None,
                None => def.key().filter(|_| def.changes(t).is_some()).map(|k| k.to_vec()),
            };
            // A table followed by its whole rows (REPLICA IDENTITY FULL) keeps none of them: a
            // TRUNCATE's retraction is rebuilt from the snapshot and the log (`rows_on_disk`).
            let keep_current = recompute_reads.contains(t);
            if keyed.is_none() && !keep_current {
                continue;
            }
            let batches =
                self.ctx.sql(&format!("SELECT * FROM \"{t}\"")).await.map_err(spillway_engine::Error::from)?;
            let batches = batches.collect().await.map_err(spillway_engine::Error::from)?;
            let file = self.project.config_path.clone().unwrap_or_else(|| self.project.dir.join("spillway.toml"));
            if let Some(key) = keyed {
                let mut k = KeyedTable::new(t, schema.clone(), &key)
                    .map_err(|source| Error::Change { file: file.clone(), error: source })?;
                for b in &batches {
                    k.load(b).map_err(|source| Error::Change { file: file.clone(), error: source })?;
                }
                self.keyed.insert(t.clone(), k);
                self.charge_table(t, None, 0)?;
            }
            if keep_current {
                let codec = RowCodec::new(schema.clone())
                    .map_err(|source| Error::Change { file: file.clone(), error: source })?;
                self.current.insert(t.clone(), Current { codec, schema: schema.clone(), rows: Arrangement::new() });
                for b in batches {
                    let z = ZSet::uniform(b, 1);
                    let c = self.current.get_mut(t).expect("just inserted");
                    let ahead = c.growth(&z);
                    self.charge_table(t, None, ahead)?;
                    let c = self.current.get_mut(t).expect("just inserted");
                    c.apply(&z).map_err(|source| Error::Change { file: file.clone(), error: source })?;
                }
                self.charge_table(t, None, 0)?;
            }
        }
        Ok(())
    }

    async fn populate(&mut self, def: &ViewDef) -> Result<()> {
        let name = def.name.clone();
        let err = |source: ViewError| Error::View {
            view: name.clone(),
            path: def.path.clone(),
            line: refusal_line(&def.sql, &source),
            error: source,
        };
        let live = match def.refresh {
            Refresh::Incremental => {
                let mut v = View::plan(&self.ctx, &name, &def.sql).await.map_err(err)?;
                v.unchanging(&self.unchanging).map_err(err)?;
                v.populate(&self.ctx).await.map_err(err)?;
                Live::Incremental(Box::new(v))
            }
            Refresh::Recompute => {
                let (ups, srcs) = references(&self.project, def, &self.project.source_tables())?;
                let frame = self.ctx.sql(&def.sql).await.map_err(|e| err(e.into()))?;
                let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
                let batches = frame.collect().await.map_err(|e| err(e.into()))?;
                let codec = RowCodec::new(schema.clone()).map_err(err)?;
                let mut r = Recomputed {
                    sql: def.sql.clone(),
                    tables: ups.into_iter().chain(srcs).collect(),
                    codec,
                    contents: Arrangement::new(),
                    rows: RecordBatch::new_empty(schema),
                };
                r.replace(batches).map_err(err)?;
                Live::Recompute(Box::new(r))
            }
        };
        let contents = match &live {
            Live::Incremental(v) => v.contents().map_err(err)?,
            Live::Recompute(r) => r.rows.clone(),
        };
        self.register_view(&name, contents)?;
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let reservation = MemoryConsumer::new(format!("view {name}")).register(&pool);
        self.reservations.insert(name.clone(), reservation);
        self.live.insert(name.clone(), live);
        self.charge(&name, None)
    }

    /// Resizes view `name`'s reservation to its state: growth is asked of the pool, and refused
    /// when the views' lease is full (nothing is then committed: the caller stops).
    fn charge(&mut self, name: &str, file: Option<&str>) -> Result<()> {
        let want = self.live.get(name).map_or(0, state_bytes);
        let Some(res) = self.reservations.get_mut(name) else { return Ok(()) };
        if want <= res.size() {
            res.resize(want);
            return Ok(());
        }
        let Err(e) = res.try_resize(want) else { return Ok(()) };
        let sizes = self.live.iter().map(|(n, l)| (state_bytes(l) as u64, n.as_str())).collect();
        Err(over_lease(name, want, sizes, e, &self.ctx.runtime_env().memory_pool, file))
    }

    /// A change batch of `table`, if it is kept by key, applied to its rows after what it adds
    /// is reserved (refused as a table's growth is, naming `file`); the Z-set it makes, or
    /// `None` for a table not kept by key. `path` names the change in errors.
    fn apply_keyed(&mut self, table: &str, batch: &RecordBatch, file: &str, path: &Path) -> Result<Option<ZSet>> {
        let change_err = |source: ViewError| Error::Change { file: path.to_path_buf(), error: source };
        let Some(k) = self.keyed.get(table) else { return Ok(None) };
        let prepared = k.prepare(batch).map_err(change_err)?;
        let ahead = k.growth(&prepared);
        self.charge_table(table, Some(file), ahead)?;
        match self.keyed.get_mut(table) {
            Some(k) => Ok(Some(k.apply_prepared(prepared).map_err(change_err)?)),
            None => Ok(None),
        }
    }

    /// Resizes the reservation of the rows kept of table `table` (by key, so that a delete or an
    /// update may name only the key; whole, for views recomputed from it) to what they hold
    /// plus `ahead` (what is about to be added); growth is asked of the pool like a view's state.
    fn charge_table(&mut self, table: &str, file: Option<&str>, ahead: usize) -> Result<()> {
        let (keyed, current) = (self.keyed.get(table), self.current.get(table));
        if keyed.is_none() && current.is_none() {
            return Ok(());
        }
        let want = keyed.map_or(0, |k| k.bytes()) + current.map_or(0, |c| c.rows.bytes()) + ahead;
        let what = if keyed.is_some() { "rows by key" } else { "current rows, for recomputed views" };
        let name = format!("table {table}");
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let res = self
            .reservations
            .entry(name.clone())
            .or_insert_with(|| MemoryConsumer::new(format!("{name} ({what})")).register(&pool));
        if want <= res.size() {
            res.resize(want);
            return Ok(());
        }
        let Err(e) = res.try_resize(want) else { return Ok(()) };
        let sizes = self.reservations.iter().map(|(n, r)| (r.size() as u64, n.as_str())).collect();
        Err(over_lease(&name, want, sizes, e, &pool, file))
    }

    /// Rewrites the arenas of the rows kept of `table` once deletes left them mostly dead, when
    /// the lease can hold the copy meanwhile (a reservation of its own, given back after);
    /// otherwise they stay as they are, still charged, for a later try.
    fn tidy_table(&mut self, table: &str) {
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let reserve = |n: usize| {
            let r = MemoryConsumer::new(format!("table {table} (rewriting its rows)")).register(&pool);
            r.try_grow(n).ok().map(|()| r)
        };
        if let Some(k) = self.keyed.get_mut(table) {
            k.compact_if(reserve);
        }
        if let Some(c) = self.current.get_mut(table) {
            c.rows.compact_if(reserve);
        }
    }

    /// (Re-)registers a view's contents as a table, for the views that read it to be planned
    /// and populated.
    fn register_view(&self, name: &str, contents: RecordBatch) -> Result<()> {
        let schema = contents.schema();
        let table = MemTable::try_new(schema, vec![vec![contents]]).map_err(spillway_engine::Error::from)?;
        let _ = self.ctx.deregister_table(name);
        self.ctx.register_table(name, Arc::new(table)).map_err(spillway_engine::Error::from)?;
        Ok(())
    }

    /// One transaction through every view in order; returns the views that changed, with
    /// their change.
    async fn transaction(&mut self, table: &str, change: &Change, file: &str) -> Result<BTreeMap<String, Change>> {
        let change_err = |source: ViewError| Error::Change { file: file.into(), error: source };
        let rt = self.ctx.runtime_env();
        if self.current.contains_key(table) {
            let mut pieces = change.stream(&rt).map_err(change_err)?;
            while let Some(z) = pieces.try_next().await.map_err(change_err)? {
                let ahead = self.current.get(table).map_or(0, |c| c.growth(&z));
                self.charge_table(table, Some(file), ahead)?;
                if let Some(c) = self.current.get_mut(table) {
                    c.apply(&z).map_err(change_err)?;
                }
            }
            self.tidy_table(table);
            self.charge_table(table, Some(file), 0)?;
        }
        // Each view's change, kept until the commit (spilled when the lease refuses it); the
        // views that read a view take its change a piece at a time.
        let mut changed: BTreeMap<String, Change> = BTreeMap::new();
        self.view_us.clear();
        for name in self.order.clone() {
            if self.stopped.contains_key(&name) {
                continue;
            }
            let view_started = Instant::now();
            let path = self.project.views[&name].path.clone();
            let view_err =
                |source: ViewError| Error::View { view: name.clone(), path: path.clone(), line: 1, error: source };
            let live = self.live.get_mut(&name).expect("every view is live");
            let out = match live {
                Live::Incremental(v) => {
                    let inputs: Vec<(String, &Change)> = v
                        .tables()
                        .iter()
                        .filter_map(|t| if t == table { Some(change) } else { changed.get(t) }.map(|c| (t.clone(), c)))
                        .collect();
                    if inputs.is_empty() {
                        continue;
                    }
                    let mut spool = Spool::new(format!("view {name} (its change)"), v.schema(), &rt);
                    let reservation = self.reservations.get_mut(&name);
                    let mut refused = None;
                    'inputs: for (t, input) in inputs {
                        let mut pieces = input.stream(&rt).map_err(change_err)?;
                        while let Some(z) = pieces.try_next().await.map_err(change_err)? {
                            // The state the pieces before this one added is the view's from now
                            // on: its reservation follows (a refusal is reported below, by name).
                            if let Some(res) = &reservation {
                                let want = v.state_bytes();
                                if let Err(e) = res.try_resize(want) {
                                    refused = Some((want, e));
                                    break 'inputs;
                                }
                            }
                            let mut deltas = Deltas::new();
                            deltas.insert(t.clone(), z);
                            v.apply_each(&deltas, &mut |out| spool.push(out)).map_err(|e| match e {
                                e @ (ViewError::BadChange { .. }
                                | ViewError::AbsentRowDeleted { .. }
                                | ViewError::InFlight { .. }) => change_err(e),
                                e => view_err(e),
                            })?;
                        }
                    }
                    if let Some((want, e)) = refused {
                        let sizes = self.live.iter().map(|(n, l)| (state_bytes(l) as u64, n.as_str())).collect();
                        let pool = self.ctx.runtime_env().memory_pool.clone();
                        return Err(over_lease(&name, want, sizes, e, &pool, Some(file)));
                    }
                    let out = spool.finish().await.map_err(view_err)?;
                    if out.on_disk() {
                        spillway_faults::point("views-view-change-spilled");
                    }
                    out
                }
                Live::Recompute(r) => {
                    if !r.tables.iter().any(|t| t == table || changed.contains_key(t)) {
                        continue;
                    }
                    let sql = r.sql.clone();
                    // Its own catalog (the same settings and pool): the tables it reads, as they are now.
                    let ctx = SessionContext::new_with_config_rt(self.ctx.copied_config(), self.ctx.runtime_env());
                    for t in r.tables.clone() {
                        let batch = match (self.current.get(&t), self.live.get(&t)) {
                            (Some(c), _) => c.batch().map_err(view_err)?,
                            (None, Some(Live::Incremental(v))) => v.contents().map_err(view_err)?,
                            (None, Some(Live::Recompute(u))) => u.rows.clone(),
                            (None, None) => continue,
                        };
                        let mem = MemTable::try_new(batch.schema(), vec![vec![batch]])
                            .map_err(spillway_engine::Error::from)?;
                        let _ = ctx.deregister_table(t.as_str());
                        ctx.register_table(t.as_str(), Arc::new(mem)).map_err(spillway_engine::Error::from)?;
                    }
                    let batches = ctx.sql(&sql).await.map_err(|e| view_err(e.into()))?;
                    let batches = batches.collect().await.map_err(|e| view_err(e.into()))?;
                    let Some(Live::Recompute(r)) = self.live.get_mut(&name) else { unreachable!("a recomputed view") };
                    Change::memory(r.replace(batches).map_err(view_err)?)
                }
            };
            let us = view_started.elapsed().as_micros() as u64;
            self.view_us.insert(name.clone(), us);
            let counts = self.counts.entry(name.clone()).or_default();
            counts.busy_us += us;
            if !out.is_empty() {
                counts.transactions += 1;
                counts.change_rows += out.rows();
            }
            self.charge(&name, Some(file))?;
            if out.is_empty() {
                continue;
            }
            self.last_change.insert(name.clone(), file.to_string());
            changed.insert(name, out);
        }
        Ok(changed)
    }

    /// Writes log entry `applied` with the rows of `change` (a piece at a time) and renames it
    /// into place: the transaction's commit point.
    async fn log(&self, applied: &Applied, change: &Change) -> Result<()> {
        let change_err = |source: ViewError| Error::Change { file: PathBuf::from(&applied.file), error: source };
        let mut entry = self.store.begin(applied, &change.schema())?;
        let mut pieces = change.stream(&self.ctx.runtime_env()).map_err(change_err)?;
        while let Some(z) = pieces.try_next().await.map_err(change_err)? {
            entry.write(&z)?;
        }
        entry.commit()
    }

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
                let (hash, _) = crate::manifest::hash_file(&path).map_err(|e| Error::io(&path, e))?;
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

    /// The position of the last logged transaction (0: none yet).
    fn last_seq(&self) -> u64 {
        self.applied.last().map_or(0, |a| a.seq)
    }

    /// Refuses to write views opened to read ([`Access::Read`]).
    fn writable(&self) -> Result<()> {
        match self.writer {
            Some(_) => Ok(()),
            None => Err(Error::Usage(format!(
                "{}: these views were opened to read; `views apply` or `views serve` writes them",
                self.project.dir.display()
            ))),
        }
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.project.dir).unwrap_or(path).to_string_lossy().into_owned()
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

    /// Publishes every contents sink once per process, so that sinks reflect the state after a
    /// population, or after a crash between a commit and its publication. Later calls do nothing.
    pub async fn publish_state(&mut self) -> Result<()> {
        self.writable()?;
        if !self.published_once {
            self.publish(&BTreeMap::new(), Publish::AllContents, self.last_seq()).await?;
            self.published_once = true;
            self.write_status()?;
        }
        Ok(())
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
        let (hash, bytes) = crate::manifest::hash_file(path).map_err(|e| Error::io(path, e))?;
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

    /// Whether a source transaction from PostgreSQL is being applied: some of its events were
    /// applied, its commit has not come. Change files wait meanwhile, so that no view (and no
    /// sink) ever holds part of a source transaction and a change file is never logged between
    /// its parts.
    pub fn mid_transaction(&self) -> bool {
        self.feed.as_ref().is_some_and(|f| f.held.is_some() || !f.changed.is_empty() || f.started.is_some())
    }

    /// Whether a source is followed through PostgreSQL logical replication.
    pub fn follows_postgres(&self) -> bool {
        self.feed.is_some()
    }

    /// The followed slot and the end of the last source transaction made durable.
    pub fn slot_position(&self) -> Option<(String, u64)> {
        self.feed.as_ref().map(|f| (f.slot.spec.slot.clone(), f.durable))
    }

    /// Starts streaming the followed slot from the durable position (if no source is
    /// followed, or it streams already, nothing). Not cancel-safe: await it to the end.
    pub async fn start_cdc(&mut self) -> Result<()> {
        self.writable()?;
        let Some(feed) = self.feed.as_mut() else { return Ok(()) };
        if feed.stream.is_none() {
            let s = CdcStream::start(&feed.slot.spec, feed.slot.tables.clone(), feed.durable, cdc::PART_ROWS).await?;
            tracing::info!(slot = %feed.slot.spec.slot, from = %cdc::lsn_text(feed.durable), "following PostgreSQL");
            feed.stream = Some(s);
        }
        Ok(())
    }

    /// Applies every PostgreSQL transaction that committed before this call, then stops the
    /// stream: what a one-shot `views apply` does, so that it never leaves a slot behind unread.
    /// `progress` sees each transaction. Nothing is followed: nothing is done.
    pub async fn catch_up_cdc(&mut self, progress: &(dyn Fn(&AppliedTxn) + Sync)) -> Result<Vec<AppliedTxn>> {
        self.writable()?;
        let Some(feed) = self.feed.as_ref() else { return Ok(Vec::new()) };
        let target = spillway_postgres::cdc::current_lsn(&feed.slot.spec).await?;
        let mut done = Vec::new();
        if target <= feed.durable {
            return Ok(done);
        }
        self.start_cdc().await?;
        loop {
            let event = self.next_cdc().await?;
            let reached = match &event {
                CdcEvent::Position { wal_end } => *wal_end >= target,
                CdcEvent::Commit { end_lsn, .. } => *end_lsn >= target,
                _ => false,
            };
            if let Some(t) = self.apply_cdc(event).await? {
                progress(&t);
                done.push(t);
            }
            if reached && !self.mid_transaction() {
                break;
            }
        }
        // The stream tells the slot what is durable once a second: waited for (a while), so
        // that PostgreSQL may recycle the WAL this read, before the stream stops.
        if let Some(f) = self.feed.as_ref() {
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            while Instant::now() < deadline
                && spillway_postgres::cdc::slot_position(&f.slot.spec).await?.is_some_and(|p| p < f.durable)
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        self.stop_cdc().await;
        Ok(done)
    }

    /// The next event of the followed slot, once [`Views::start_cdc`] has started it.
    /// Cancel-safe. Pending forever when no source is followed or the stream is not started.
    pub async fn next_cdc(&mut self) -> Result<CdcEvent> {
        let Some(stream) = self.feed.as_mut().and_then(|f| f.stream.as_mut()) else {
            return std::future::pending().await;
        };
        Ok(stream.next().await?)
    }

    /// Stops the followed slot's stream (the slot keeps everything not yet made durable).
    pub async fn stop_cdc(&mut self) {
        if let Some(s) = self.feed.as_mut().and_then(|f| f.stream.take()) {
            s.stop().await;
        }
    }

    /// Applies one event of the followed slot. Rows become a part of the source transaction;
    /// the commit logs its last part as the commit point, publishes the sinks, and only then
    /// tells the slot the position is durable. Returns the transaction at its commit.
    pub async fn apply_cdc(&mut self, event: CdcEvent) -> Result<Option<AppliedTxn>> {
        self.writable()?;
        let Some(feed) = self.feed.as_mut() else { return Ok(None) };
        match event {
            CdcEvent::Rows { table, batch } => {
                let name = feed.table_name(table)?;
                if !self.schemas.contains_key(&name) {
                    // Followed by the slot, read by no view (any more): skipped, and
                    // acknowledged with the transaction's commit.
                    tracing::debug!(table = %name, rows = batch.num_rows(), "change of a table no view reads: skipped");
                    return Ok(None);
                }
                feed.started.get_or_insert_with(Instant::now);
                feed.rows += batch.num_rows() as u64;
                let schema = self.schemas[&name].clone();
                let file = PathBuf::from(format!("postgres:{}", feed.slot.spec.slot));
                let change_err = |source: ViewError| Error::Change { file: file.clone(), error: source };
                let source = file.display().to_string();
                let z = match self.apply_keyed(&name, &batch, &source, &file)? {
                    Some(z) => z,
                    None => changes::unkeyed(&name, &batch, &schema).map_err(change_err)?,
                };
                self.tidy_table(&name);
                self.charge_table(
                    &name,
                    Some(&format!("postgres:{}", self.feed.as_ref().map_or("", |f| f.slot.spec.slot.as_str()))),
                    0,
                )?;
                self.hold(name, z).await?;
                Ok(None)
            }
            CdcEvent::Truncate { tables } => {
                let names = tables.iter().map(|&t| feed.table_name(t)).collect::<Result<Vec<String>>>()?;
                let names: Vec<String> = names.into_iter().filter(|n| self.schemas.contains_key(n)).collect();
                if names.is_empty() {
                    return Ok(None);
                }
                let feed = self.feed.as_mut().expect("feed");
                feed.started.get_or_insert_with(Instant::now);
                for name in names {
                    // What is held may be rows of this table: applied first, so all are retracted.
                    self.flush_held(None).await?;
                    let schema = spillway_views::relax_nullability(&self.schemas[&name]);
                    let file = PathBuf::from(format!("postgres:{name}"));
                    let change_err = |source: ViewError| Error::Change { file: file.clone(), error: source };
                    let z = match (self.keyed.get_mut(&name), self.current.get(&name)) {
                        (Some(k), _) => k.truncate().map_err(change_err)?,
                        (None, Some(c)) => ZSet::uniform(c.batch().map_err(change_err)?, -1),
                        (None, None) => self.rows_on_disk(&name)?.negate(),
                    };
                    let z = z.with_schema(schema).map_err(change_err)?;
                    if let Some(f) = self.feed.as_mut() {
                        f.rows += z.len() as u64;
                    }
                    self.hold(name, z).await?;
                }
                Ok(None)
            }
            CdcEvent::SchemaChanged { table, problem } => {
                let name = feed.table_name(table)?;
                if !self.schemas.contains_key(&name) {
                    return Ok(None); // no view reads it: nothing to stop
                }
                self.stop_readers_of(&name, &problem)?;
                Ok(None)
            }
            CdcEvent::Position { wal_end } => {
                // Between transactions, every one before `wal_end` applied: PostgreSQL may
                // recycle the WAL before it (changes to tables nobody follows included).
                if feed.held.is_none() && feed.changed.is_empty() && wal_end > feed.durable {
                    feed.durable = wal_end;
                    if let Some(s) = &feed.stream {
                        s.ack(wal_end);
                    }
                }
                Ok(None)
            }
            CdcEvent::Commit { end_lsn, commit_us } => {
                if feed.held.is_none() && feed.changed.is_empty() {
                    // Nothing of ours changed: nothing to make durable first.
                    feed.durable = feed.durable.max(end_lsn);
                    if let Some(s) = &feed.stream {
                        s.ack(end_lsn);
                    }
                    feed.rows = 0;
                    feed.started = None;
                    return Ok(None);
                }
                let parts_before = self.applied.len();
                if feed.held.is_none() {
                    // Every part was applied already (the last event was a schema change):
                    // an empty part is the commit.
                    // It is logged against a followed table that a view reads (one had rows).
                    let read = feed.slot.tables.iter().map(|t| &t.name).find(|n| self.schemas.contains_key(*n));
                    let Some(name) = read.cloned() else {
                        return Err(Error::Usage("no followed table is read by a view".into()));
                    };
                    let schema = spillway_views::relax_nullability(&self.schemas[&name]);
                    self.feed.as_mut().expect("feed").held = Some((name, ZSet::empty(schema)));
                }
                self.flush_held(Some(end_lsn)).await?;
                let feed = self.feed.as_mut().expect("feed");
                let file = PathBuf::from(format!("postgres:{}", feed.slot.spec.slot));
                let changed = finish_all(std::mem::take(&mut feed.changed))
                    .await
                    .map_err(|source| Error::Change { file, error: source })?;
                let rows = std::mem::take(&mut feed.rows);
                let started = feed.started.take().unwrap_or_else(Instant::now);
                let seq = self.last_seq();
                self.publish(&changed, Publish::Changed, seq).await?;
                spillway_faults::point("views-cdc-before-ack");
                let feed = self.feed.as_mut().expect("feed");
                feed.durable = end_lsn;
                if let Some(s) = &feed.stream {
                    s.ack(end_lsn);
                }
                self.write_status()?;
                Ok(Some(AppliedTxn {
                    end_lsn,
                    commit_us,
                    rows,
                    parts: (self.applied.len() - parts_before) as u64,
                    views_changed: changed.keys().cloned().collect(),
                    us: started.elapsed().as_micros() as u64,
                    spilled: changed.values().map(Change::spilled_bytes).sum(),
                }))
            }
        }
    }

    /// The current rows of followed table `table`, from what is on disk: its snapshot plus
    /// every logged change to it (so a table followed by whole rows needs none in memory; this
    /// costs one read of it, at a TRUNCATE).
    fn rows_on_disk(&self, table: &str) -> Result<ZSet> {
        let schema = spillway_views::relax_nullability(&self.schemas[table]);
        let corrupt = |p: &Path, e: String| Error::at(p, 1, format!("unreadable snapshot: {e}"));
        let mut parts = Vec::new();
        if let Some(path) = self.feed.as_ref().and_then(|f| f.slot.snapshots.get(table)) {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let reader = arrow::ipc::reader::FileReader::try_new(f, None).map_err(|e| corrupt(path, e.to_string()))?;
            for b in reader {
                let b = b.map_err(|e| corrupt(path, e.to_string()))?;
                parts.push(ZSet::uniform(b, 1).with_schema(schema.clone()).map_err(|e| corrupt(path, e.to_string()))?);
            }
        }
        for a in self.applied.iter().filter(|a| a.table == table) {
            parts.push(self.store.read(a.seq, &self.schemas[table])?);
        }
        let file = PathBuf::from(format!("postgres:{table}"));
        let z = ZSet::concat(schema, parts)
            .and_then(|z| z.consolidate())
            .map_err(|source| Error::Change { file, error: source })?;
        Ok(z)
    }

    /// Holds `z` as the transaction's latest part, applying the one held before.
    async fn hold(&mut self, table: String, z: ZSet) -> Result<()> {
        self.flush_held(None).await?;
        if let Some(f) = self.feed.as_mut() {
            f.held = Some((table, z));
        }
        Ok(())
    }

    /// Applies and logs the held part; `end_lsn` makes it the transaction's commit.
    async fn flush_held(&mut self, end_lsn: Option<u64>) -> Result<()> {
        let Some(feed) = self.feed.as_mut() else { return Ok(()) };
        let Some((table, z)) = feed.held.take() else { return Ok(()) };
        let slot = feed.slot.spec.slot.clone();
        let seq = self.last_seq() + 1;
        let file = format!("postgres:{slot}:{seq:08}");
        let change = Change::memory(z);
        let changed = self.transaction(&table, &change, &file).await?;
        let applied = Applied {
            seq,
            table: table.clone(),
            file: file.clone(),
            bytes: 0,
            hash: String::new(),
            cdc: Some(CdcMark { slot, end_lsn }),
        };
        self.log(&applied, &change).await?;
        match end_lsn {
            Some(_) => spillway_faults::point("views-after-commit"),
            None => spillway_faults::point("views-cdc-after-part"),
        }
        self.applied_index.insert(file.clone(), self.applied.len());
        self.applied.push(applied);
        // Each view's change so far, in a spool per view (consolidated as it doubles, so an
        // aggregate's change stays as small as its groups however many parts the transaction has).
        let rt = self.ctx.runtime_env();
        let feed = self.feed.as_mut().expect("feed");
        keep(&mut feed.changed, changed, &rt)
            .await
            .map_err(|source| Error::Change { file: PathBuf::from(&file), error: source })
    }

    /// Stops every view that reads `table` (directly or through other views): its columns
    /// changed in PostgreSQL. The other views go on; the stopped ones stay stopped (recorded in
    /// the store) until the project's views are rebuilt.
    fn stop_readers_of(&mut self, table: &str, problem: &str) -> Result<()> {
        let sources = self.project.source_tables();
        let mut hit: BTreeSet<String> = BTreeSet::new();
        for name in &self.order {
            let def = &self.project.views[name];
            let Ok((ups, srcs)) = references(&self.project, def, &sources) else { continue };
            if srcs.iter().any(|t| t == table) || ups.iter().any(|u| hit.contains(u)) {
                hit.insert(name.clone());
            }
        }
        for v in hit {
            tracing::error!(view = %v, "{problem}: the view is stopped (the other views go on)");
            self.stopped.insert(v, problem.to_string());
        }
        self.store.write_stopped(&self.stopped)?;
        self.write_status()
    }

    /// Publishes sinks together: contents sinks get the whole view, changelog sinks transaction
    /// `seq`'s change (a changelog file already written is left as it is).
    async fn publish(&mut self, changed: &BTreeMap<String, Change>, what: Publish, seq: u64) -> Result<()> {
        let all = what == Publish::AllContents;
        let mut staged = Vec::new();
        for def in self.project.sinks.values() {
            if self.stopped.contains_key(&def.model) {
                continue;
            }
            let Some(live) = self.live.get(&def.model) else { continue };
            let Some(path) = def.file() else { continue };
            let path = self.project.dir.join(path);
            let view_err = |source: ViewError| Error::View {
                view: def.model.clone(),
                path: self.project.views[&def.model].path.clone(),
                line: 1,
                error: source,
            };
            let rows = if def.changelog.unwrap_or(false) {
                if what == Publish::AllContents {
                    continue;
                }
                let Some(change) = changed.get(&def.model) else { continue };
                let file = changelog_path(&path, seq);
                if file.exists() {
                    continue;
                }
                // Written a piece at a time (a change spooled to disk is never read whole).
                Some((file, change.weighted_stream(&self.ctx.runtime_env()).map_err(view_err)?))
            } else if what != Publish::Changelogs && (all || changed.contains_key(&def.model)) {
                let b = match live {
                    Live::Incremental(v) => v.contents().map_err(view_err)?,
                    Live::Recompute(r) => r.rows.clone(),
                };
                let stream = RecordBatchStreamAdapter::new(b.schema(), futures::stream::iter(vec![Ok(b)]));
                Some((path, Box::pin(stream) as datafusion::execution::SendableRecordBatchStream))
            } else {
                None
            };
            let Some((file, rows)) = rows else { continue };
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            staged
                .push(spillway_tiers::file::stage_stream(rows, &file, &spillway_tiers::WriteOptions::default()).await?);
        }
        for s in staged {
            s.publish()?;
        }
        if what != Publish::Changelogs {
            self.publish_postgres(changed, all, seq).await?;
        }
        Ok(())
    }

    /// The views' PostgreSQL sinks: each its own PostgreSQL transaction that records `seq` with
    /// the rows. `all`: every sink that does not hold transaction `seq` yet gets its whole view
    /// (after population, or after a crash between the log's commit and the sink's).
    async fn publish_postgres(&mut self, changed: &BTreeMap<String, Change>, all: bool, seq: u64) -> Result<()> {
        let sinks: Vec<(String, String, spillway_postgres::SinkSpec)> = self
            .project
            .sinks
            .iter()
            .filter(|(_, d)| self.live.contains_key(&d.model) && !self.stopped.contains_key(&d.model))
            .filter_map(|(n, d)| match d.target(n, &self.project.dir) {
                Ok(crate::project::SinkTarget::Postgres { spec, optional }) if !(optional && spec.conn.env_unset()) => {
                    Some((n.clone(), d.model.clone(), spec))
                }
                _ => None,
            })
            .collect();
        for (name, model, spec) in sinks {
            let change = changed.get(&model);
            if !all && change.is_none() {
                continue;
            }
            if all && view_sink::progress(&spec).await? == Some(seq) {
                continue;
            }
            if !self.pg_sinks.contains_key(&name) {
                self.pg_sinks.insert(name.clone(), ViewSink::connect(&spec).await?);
            }
            let whole = match change {
                Some(_) if !all && spec.mode == spillway_postgres::Mode::Upsert => None,
                _ => Some(self.contents(&model)?),
            };
            let sink = self.pg_sinks.get_mut(&name).expect("connected");
            let view_err = |e: ViewError| Error::View {
                view: model.clone(),
                path: self.project.views[&model].path.clone(),
                line: 1,
                error: e,
            };
            let result = match (change, &whole) {
                (_, Some(whole)) => sink.publish(seq, Publication::Whole(whole)).await,
                (Some(change), None) => {
                    // Sent as one PostgreSQL statement pair: a change spooled to disk is read whole here.
                    let z = change.collect(&self.ctx.runtime_env()).await.map_err(view_err)?;
                    let (retracted, inserted) = split_by_sign(&z).map_err(view_err)?;
                    sink.publish(seq, Publication::Change { retracted: &retracted, inserted: &inserted }).await
                }
                (None, None) => unreachable!("a change, or the whole view"),
            };
            if let Err(e) = result {
                self.pg_sinks.remove(&name); // a broken connection is made again next time
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn write_status(&self) -> Result<()> {
        self.store.write_status(&self.status())
    }

    /// Per view: rows, state, what reached it; and the transactions applied.
    pub fn status(&self) -> Status {
        let views = self
            .order
            .iter()
            .map(|name| {
                let live = &self.live[name];
                let counts = self.counts.get(name).copied().unwrap_or_default();
                ViewStatus {
                    name: name.clone(),
                    refresh: match live {
                        Live::Incremental(_) => "incremental".into(),
                        Live::Recompute(_) => "recompute".into(),
                    },
                    rows: match live {
                        Live::Incremental(v) => v.rows(),
                        Live::Recompute(r) => r.rows.num_rows() as u64,
                    },
                    state_bytes: state_bytes(live) as u64,
                    last_change: self.last_change.get(name).cloned(),
                    transactions: counts.transactions,
                    change_rows: counts.change_rows,
                    busy_us: counts.busy_us,
                    stopped: self.stopped.get(name).cloned(),
                }
            })
            .collect();
        Status {
            applied: self.applied.len() as u64,
            last_file: self.applied.last().map(|a| a.file.clone()),
            updated_at: now_rfc3339(),
            populate_ms: self.populate_ms,
            views,
            slot: self.feed.as_ref().map(|f| f.slot.spec.slot.clone()),
            slot_lsn: self.feed.as_ref().map(|f| cdc::lsn_text(f.durable)),
        }
    }

    /// Logged transactions replayed when the process started.
    pub fn replayed(&self) -> usize {
        self.replayed
    }

    /// Transactions applied so far (replayed ones included).
    pub fn applied(&self) -> u64 {
        self.applied.len() as u64
    }

    /// The views, in the order transactions reach them (a view after the views it reads).
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// `views explain`: per view, its operators with their state.
    pub fn explain(&self, only: Option<&str>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if let Some(v) = only {
            if !self.live.contains_key(v) {
                return Err(Error::Usage(format!("no view {v:?} (views: {})", self.order.join(", "))));
            }
        }
        for name in self.order.iter().filter(|n| only.is_none_or(|o| o == n.as_str())) {
            let live = &self.live[name];
            match live {
                Live::Incremental(v) => {
                    out.push(format!(
                        "view {name} (incremental): {} rows, state {}",
                        v.rows(),
                        spillway_governor::fmt_bytes(state_bytes(live) as u64)
                    ));
                    out.extend(v.explain().into_iter().map(|l| format!("  {l}")));
                }
                Live::Recompute(r) => {
                    out.push(format!(
                        "view {name} (refresh = recompute): {} rows, recomputed after every change to {}",
                        r.rows.num_rows(),
                        r.tables.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The current contents of view `name`.
    pub fn contents(&self, name: &str) -> Result<RecordBatch> {
        match self.live.get(name) {
            Some(Live::Incremental(v)) => v.contents().map_err(|source| Error::View {
                view: name.into(),
                path: self.project.views[name].path.clone(),
                line: 1,
                error: source,
            }),
            Some(Live::Recompute(r)) => Ok(r.rows.clone()),
            None => Err(Error::Usage(format!("no view {name:?}"))),
        }
    }
}

impl Recomputed {
    /// Replaces the contents with `batches`; returns the change.
    fn replace(&mut self, batches: Vec<RecordBatch>) -> std::result::Result<ZSet, ViewError> {
        let schema = self.codec.schema().clone();
        let mut next = Arrangement::new();
        for b in &batches {
            let z = ZSet::uniform(b.clone(), 1).with_schema(schema.clone())?;
            for r in self.codec.encode_batch(&z.batch)?.iter() {
                next.add(&[], r.as_ref(), 1);
            }
        }
        // The change: what is new less what was (each row's difference of multiplicity).
        let (mut rows, mut weights): (Vec<&[u8]>, Vec<i64>) = (Vec::new(), Vec::new());
        for (_, r, c) in next.iter() {
            let d = c - self.contents.weight(&[], r);
            if d != 0 {
                rows.push(r);
                weights.push(d);
            }
        }
        for (_, r, c) in self.contents.iter() {
            if next.weight(&[], r) == 0 {
                rows.push(r);
                weights.push(-c);
            }
        }
        let out = ZSet::new(self.codec.decode(rows)?, weights);
        self.rows = self.codec.decode(next.rows())?;
        self.contents = next;
        Ok(out)
    }
}

/// The error of `name`'s state (`want` bytes) refused by the pool, with what holds the lease
/// (`sizes`: bytes and holder), the largest first.
fn over_lease(
    name: &str,
    want: usize,
    mut sizes: Vec<(u64, &str)>,
    e: datafusion::error::DataFusionError,
    pool: &Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    file: Option<&str>,
) -> Error {
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest = sizes
        .iter()
        .take(3)
        .map(|(b, n)| format!("{n} {}", spillway_governor::fmt_bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    let lease = match pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(b) => b as u64,
        _ => 0,
    };
    Error::ViewMemory {
        view: name.to_string(),
        state: want as u64,
        total: sizes.iter().map(|(b, _)| b).sum(),
        lease,
        largest: if largest.is_empty() { "none yet".into() } else { largest },
        reason: match e {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => m,
            e => e.to_string(),
        },
        file: file.map(PathBuf::from),
    }
}

/// Rows of negative weight and rows of positive weight, each repeated as often as its weight.
fn split_by_sign(z: &ZSet) -> std::result::Result<(RecordBatch, RecordBatch), ViewError> {
    let z = z.consolidate()?;
    let (mut neg, mut pos) = (Vec::new(), Vec::new());
    for (i, w) in z.weights.iter().enumerate() {
        let to = if *w < 0 { &mut neg } else { &mut pos };
        to.extend(std::iter::repeat_n(i as u32, w.unsigned_abs() as usize));
    }
    let take = |idx: &[u32]| -> std::result::Result<RecordBatch, ViewError> {
        let idx = arrow::array::UInt32Array::from(idx.to_vec());
        Ok(arrow::compute::take_record_batch(&z.batch, &idx)?)
    };
    Ok((take(&neg)?, take(&pos)?))
}

/// Adds each view's `changed` to its spool in `spools` (one per view, made on first use).
async fn keep(
    spools: &mut BTreeMap<String, Spool>,
    changed: BTreeMap<String, Change>,
    rt: &Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> std::result::Result<(), ViewError> {
    for (v, change) in changed {
        let spool = match spools.entry(v) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let what = format!("view {} (its change)", e.key());
                e.insert(Spool::new(what, change.schema(), rt))
            }
        };
        let mut pieces = change.stream(rt)?;
        while let Some(z) = pieces.try_next().await? {
            spool.push(z)?;
        }
    }
    Ok(())
}

/// Each view's spooled change, consolidated (views whose parts cancel out are left out).
async fn finish_all(spools: BTreeMap<String, Spool>) -> std::result::Result<BTreeMap<String, Change>, ViewError> {
    let mut out = BTreeMap::new();
    for (view, spool) in spools {
        let change = spool.finish().await?;
        if !change.is_empty() {
            out.insert(view, change);
        }
    }
    Ok(out)
}

fn state_bytes(live: &Live) -> usize {
    match live {
        Live::Incremental(v) => v.state_bytes(),
        Live::Recompute(r) => r.rows.get_array_memory_size() + r.contents.bytes(),
    }
}

/// `output/v.parquet`'s file for transaction `seq`: `output/v.00000042.parquet`.
pub fn changelog_path(path: &Path, seq: u64) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}.{seq:08}.{ext}"))
}

/// The rows of a change file (Parquet, CSV with a header, NDJSON or Arrow IPC), a batch at a
/// time, in the file's order (one partition: a large file split into ranges read side by side
/// would interleave an insert and a later upsert of the same key). A CSV file is read with the
/// types of `table`'s columns as its header names them (`_op` and columns the table does not
/// have as text, refused later by name), never inferred from its values: a text key `007` stays
/// `007`.
async fn read_change_file(
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
fn csv_header(path: &Path) -> Result<Vec<String>> {
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

fn now_rfc3339() -> String {
    crate::results::now_rfc3339()
}
