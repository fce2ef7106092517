//! The views of a project, hosted: [`Views`] opens them (sources prepared and registered, every
//! view planned and populated in dependency order, the log replayed) and answers what they hold
//! (status, explain, contents). How changes reach them is in the sibling modules: `intake`
//! (change files), `feed` (PostgreSQL), `txn` (one transaction through every view), `publish`
//! (sinks), `accounting` (the reservations their state is charged to), `recompute`.

use crate::error::{Error, Result};
use crate::feed::Feed;
use crate::recompute::{Current, Recomputed};
use crate::store::{Applied, Status, Store, ViewStatus, WriterLock};
use crate::{cdc, intake, txn};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::prelude::SessionContext;
use spillway_postgres::cdc::Identity;
use spillway_postgres::view_sink::ViewSink;
use spillway_project::sources::{self, Generator};
use spillway_project::{line_of, Project, Refresh, ViewDef};
use spillway_views::changes::KeyedTable;
use spillway_views::{Arrangement, Change, Held, RowCodec, Spool, View, ViewError, ZSet};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

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

pub(crate) enum Live {
    Incremental(Box<View>),
    Recompute(Box<Recomputed>),
}

/// What has reached one view since the process started.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Transactions that changed it.
    pub(crate) transactions: u64,
    /// Rows of its changes (inserted and retracted).
    pub(crate) change_rows: u64,
    /// Time spent absorbing transactions, microseconds.
    pub(crate) busy_us: u64,
}

/// The live views of a project.
pub struct Views {
    pub(crate) project: Project,
    pub(crate) ctx: SessionContext,
    pub(crate) order: Vec<String>,
    pub(crate) live: BTreeMap<String, Live>,
    pub(crate) schemas: BTreeMap<String, SchemaRef>,
    pub(crate) keyed: BTreeMap<String, KeyedTable>,
    pub(crate) current: BTreeMap<String, Current>,
    pub(crate) reservations: BTreeMap<String, MemoryReservation>,
    pub(crate) store: Store,
    pub(crate) applied: Vec<Applied>,
    pub(crate) last_change: BTreeMap<String, String>,
    pub(crate) populate_ms: u64,
    pub(crate) replayed: usize,
    pub(crate) published_once: bool,
    /// Per view, microseconds the last transaction took in it.
    pub(crate) view_us: BTreeMap<String, u64>,
    /// Per view, what has reached it since the process started.
    pub(crate) counts: BTreeMap<String, Counts>,
    /// Position in `applied` of each applied change file (relative path).
    pub(crate) applied_index: HashMap<String, usize>,
    /// Applied change files already looked at by `pending` in this process.
    pub(crate) checked: HashSet<String>,
    /// The PostgreSQL slot the views follow, if any source has `cdc = true`.
    pub(crate) feed: Option<Feed>,
    /// Views stopped by a change to a table they read (its columns changed), with why.
    pub(crate) stopped: BTreeMap<String, String>,
    /// The store's writer lock; `None` when opened to read ([`Access::Read`]).
    pub(crate) writer: Option<WriterLock>,
    /// Open connections of the views' PostgreSQL sinks, by sink name.
    pub(crate) pg_sinks: BTreeMap<String, ViewSink>,
    /// Tables (and views) that never change: sources without a change feed, and views that
    /// read only such. Views' joins keep no state for the side opposite them.
    pub(crate) unchanging: BTreeSet<String>,
    /// Each view's contents while it is registered for the views that read it to populate
    /// against (reserved; dropped once every view is populated).
    pub(crate) registered: BTreeMap<String, Held>,
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
        let order = spillway_project::dag::topological(&upstream)?;
        let read_by_views: BTreeSet<String> = upstream.values().flatten().cloned().collect();
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
            registered: BTreeMap::new(),
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
        let snapshot = intake::file_snapshot(project, &tables.locations, &followed)?;
        let logged = views.applied.iter().any(|a| a.cdc.is_none());
        views.store.check_snapshot(&snapshot, logged, views.writer.is_some())?;
        views.load_tables(&needed).await?;
        for (i, name) in order.iter().enumerate() {
            let t = Instant::now();
            views.populate(&project.views[name], read_by_views.contains(name)).await?;
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
        views.registered.clear();
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
                txn::keep(&mut spools, changed, &rt).await.map_err(change_err)?;
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
            let changed = txn::finish_all(std::mem::take(&mut spools)).await.map_err(change_err)?;
            if views.writer.is_some() {
                views.publish(&changed, crate::publish::Publish::Changelogs, a.seq).await?;
            }
            views.replayed += 1;
        }
        views.populate_ms = started.elapsed().as_millis() as u64;
        Ok(views)
    }

    pub(crate) fn schema_of(&self, table: &str, file: &Path) -> Result<SchemaRef> {
        self.schemas.get(table).cloned().ok_or_else(|| {
            Error::at(
                file,
                1,
                format!("changes to table {table}, which no view reads (or which is no longer a source)"),
            )
        })
    }

    /// Keyed tables' rows, and current rows of tables read by recomputed views.
    pub(crate) async fn load_tables(&mut self, needed: &[String]) -> Result<()> {
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

    /// Plans and populates view `def`; `read` says whether other views read it (its contents are
    /// then registered for them to populate against, reserved until every view is populated).
    pub(crate) async fn populate(&mut self, def: &ViewDef, read: bool) -> Result<()> {
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
        // Registered for the views that read it to plan and populate against, reserved until
        // every view is populated; a view no view reads is registered empty (its schema only).
        if read {
            let contents = match &live {
                Live::Incremental(v) => v.contents().map_err(err)?,
                Live::Recompute(r) => Held::shared(r.rows.clone()),
            };
            self.register_view(&name, contents.batch.clone())?;
            self.registered.insert(name.clone(), contents);
        } else {
            let schema = match &live {
                Live::Incremental(v) => spillway_views::relax_nullability(&v.schema()),
                Live::Recompute(r) => r.rows.schema(),
            };
            self.register_view(&name, RecordBatch::new_empty(schema))?;
        }
        let pool = self.ctx.runtime_env().memory_pool.clone();
        let reservation = MemoryConsumer::new(format!("view {name}")).register(&pool);
        self.reservations.insert(name.clone(), reservation);
        self.live.insert(name.clone(), live);
        self.charge(&name, None)
    }

    /// (Re-)registers a view's contents as a table, for the views that read it to be planned
    /// and populated.
    pub(crate) fn register_view(&self, name: &str, contents: RecordBatch) -> Result<()> {
        let schema = contents.schema();
        let table = MemTable::try_new(schema, vec![vec![contents]]).map_err(spillway_engine::Error::from)?;
        let _ = self.ctx.deregister_table(name);
        self.ctx.register_table(name, Arc::new(table)).map_err(spillway_engine::Error::from)?;
        Ok(())
    }

    /// The position of the last logged transaction (0: none yet).
    pub(crate) fn last_seq(&self) -> u64 {
        self.applied.last().map_or(0, |a| a.seq)
    }

    /// Refuses to write views opened to read ([`Access::Read`]).
    pub(crate) fn writable(&self) -> Result<()> {
        match self.writer {
            Some(_) => Ok(()),
            None => Err(Error::Usage(format!(
                "{}: these views were opened to read; `views apply` or `views serve` writes them",
                self.project.dir.display()
            ))),
        }
    }

    pub(crate) fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.project.dir).unwrap_or(path).to_string_lossy().into_owned()
    }

    pub(crate) fn write_status(&self) -> Result<()> {
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
            updated_at: spillway_project::clock::now_rfc3339(),
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

    /// The current contents of view `name`, reserved from the views' pool (refused when the
    /// lease has no room for them) until the [`Held`] is dropped.
    pub fn contents(&self, name: &str) -> Result<Held> {
        match self.live.get(name) {
            Some(Live::Incremental(v)) => v.contents().map_err(|source| Error::View {
                view: name.into(),
                path: self.project.views[name].path.clone(),
                line: 1,
                error: source,
            }),
            Some(Live::Recompute(r)) => Ok(Held::shared(r.rows.clone())),
            None => Err(Error::Usage(format!("no view {name:?}"))),
        }
    }
}

/// The views and source tables a view reads.
pub(crate) fn references(
    project: &Project,
    view: &ViewDef,
    sources: &BTreeMap<String, String>,
) -> Result<(Vec<String>, Vec<String>)> {
    let tables = spillway_project::dag::tables_read(&view.path, &view.sql, "view")?;
    let (mut ups, mut srcs) = (BTreeSet::new(), BTreeSet::new());
    for t in tables {
        let name = t.table().to_string();
        if name == view.name {
            return Err(spillway_project::Error::Cycle(format!(
                "view {} reads itself ({})",
                view.name,
                view.path.display()
            ))
            .into());
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
pub(crate) fn refusal_line(sql: &str, err: &ViewError) -> usize {
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

pub(crate) fn state_bytes(live: &Live) -> usize {
    match live {
        Live::Incremental(v) => v.state_bytes(),
        Live::Recompute(r) => r.rows.get_array_memory_size() + r.contents.bytes(),
    }
}
