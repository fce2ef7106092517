//! The views' side of a PostgreSQL slot (`cdc` opens the slot): each source transaction applied
//! in parts of at most `PART_ROWS` rows (each part logged), its views' changes kept until its
//! commit, the sinks published at the commit, and only then the position made durable.

use crate::cdc;
use crate::error::{Error, Result};
use crate::host::{references, Views};
use crate::publish::Publish;
use crate::store::{Applied, CdcMark};
use crate::txn::{finish_all, keep};
use spillway_postgres::cdc::{CdcEvent, CdcStream};
use spillway_views::{changes, Change, Spool, ViewError, ZSet};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A followed slot and the source transaction being applied.
pub(crate) struct Feed {
    pub(crate) slot: cdc::Slot,
    pub(crate) stream: Option<CdcStream>,
    /// The end of the last source transaction logged whole.
    pub(crate) durable: u64,
    /// The transaction's latest part, applied at the next event (so that its last part is
    /// logged as the commit).
    pub(crate) held: Option<(String, ZSet)>,
    /// What the transaction's parts changed so far, per view (spilled when the lease refuses it).
    pub(crate) changed: BTreeMap<String, Spool>,
    pub(crate) rows: u64,
    pub(crate) started: Option<Instant>,
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

impl Views {
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
    pub(crate) fn rows_on_disk(&self, table: &str) -> Result<ZSet> {
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
    pub(crate) async fn hold(&mut self, table: String, z: ZSet) -> Result<()> {
        self.flush_held(None).await?;
        if let Some(f) = self.feed.as_mut() {
            f.held = Some((table, z));
        }
        Ok(())
    }

    /// Applies and logs the held part; `end_lsn` makes it the transaction's commit.
    pub(crate) async fn flush_held(&mut self, end_lsn: Option<u64>) -> Result<()> {
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
    pub(crate) fn stop_readers_of(&mut self, table: &str, problem: &str) -> Result<()> {
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
}
