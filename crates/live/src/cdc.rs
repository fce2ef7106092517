//! Views fed by PostgreSQL logical replication: the sources with `cdc = true`.
//!
//! ```text
//!   .spillway/views/cdc/<slot>/
//!     slot.json            the slot, its publication, its consistent point, and each table's
//!                          columns and identity as they were when the snapshot was read
//!     snapshot/<t>.arrow   each table's rows in the slot's exported snapshot: what the views
//!                          are populated from, at every start (the log replays what followed)
//!     creating             present while the slot and snapshot are being made: a slot found
//!                          with it is ours and unfinished, and is made again
//! ```
//!
//! One slot carries every followed table of a database, so a PostgreSQL transaction that changes
//! several of them is one transaction of the views. `feed.rs` applies what the stream yields
//! (`Views::apply_cdc`); this module owns the slot's files and the settings.

use crate::error::{Error, Result};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use spillway_postgres::cdc::{self, CdcSpec, CdcTable, Identity};
use spillway_postgres::TableName;
use spillway_project::Project;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rows of one table at most in one part of a source transaction (a larger transaction is
/// applied and logged a part at a time, and published at its commit).
pub const PART_ROWS: usize = 8192;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableFile {
    name: String,
    schema: String,
    table: String,
    columns: Vec<(String, u32, i32, bool)>,
    /// Key columns; `None`: REPLICA IDENTITY FULL.
    key: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotFile {
    slot: String,
    publication: String,
    consistent_lsn: u64,
    tables: Vec<TableFile>,
}

/// The slot of a project's followed tables, as `Views` uses it.
pub struct Slot {
    /// What to follow.
    pub spec: CdcSpec,
    /// The tables, as their snapshot was read.
    pub tables: Vec<CdcTable>,
    /// Where streaming starts when nothing was logged yet.
    pub consistent_lsn: u64,
    /// Each table's snapshot file.
    pub snapshots: BTreeMap<String, PathBuf>,
}

/// The CDC sources among `tables` as one [`CdcSpec`] (`None`: there are none). Sources on
/// different connections or slots are refused: one slot per project for now.
pub fn spec_of(project: &Project, tables: &[String]) -> Result<Option<CdcSpec>> {
    let by_table = project.source_tables();
    let mut spec: Option<CdcSpec> = None;
    let mut names = Vec::new();
    for t in tables {
        let Some(source) = by_table.get(t) else { continue };
        let Some(c) = project.sources[source].cdc(&project.dir) else { continue };
        let (cfg, line) = spillway_project::sources::source_line(project, source);
        let c = c.map_err(|m| Error::at(&cfg, line, format!("[sources.{source}]: {m}")))?;
        names.push(source.clone());
        match &mut spec {
            None => {
                spec = Some(CdcSpec {
                    name: String::new(),
                    conn: c.conn,
                    slot: c.slot,
                    publication: c.publication,
                    tables: vec![(t.clone(), c.table)],
                })
            }
            Some(s) if s.conn == c.conn && s.slot == c.slot && s.publication == c.publication => {
                s.tables.push((t.clone(), c.table))
            }
            Some(s) => {
                return Err(Error::at(
                    &cfg,
                    line,
                    format!(
                        "[sources.{source}]: every cdc source of a project shares one connection, slot and \
                         publication (the others use slot {} and publication {})",
                        s.slot, s.publication
                    ),
                ))
            }
        }
    }
    Ok(spec.map(|mut s| {
        s.name = names.join(", ");
        s
    }))
}

/// Checks that the project's followed tables can be followed (wal_level, each table's
/// identity and column types): what `spillway plan` reports.
pub async fn check(project: &Project) -> Result<()> {
    let tables: Vec<String> = project.source_tables().into_keys().collect();
    if let Some(spec) = spec_of(project, &tables)? {
        cdc::describe(&spec).await?;
    }
    Ok(())
}

fn dir_of(store_dir: &Path, slot: &str) -> PathBuf {
    store_dir.join("cdc").join(slot)
}

/// The project's slot, made (with its snapshot) when this is its first start and `may_create`
/// (the views' writer); otherwise an error saying that the views are not live yet.
pub async fn open(store_dir: &Path, spec: CdcSpec, may_create: bool) -> Result<Slot> {
    let dir = dir_of(store_dir, &spec.slot);
    let slot_file = dir.join("slot.json");
    let creating = dir.join("creating");
    let snap_dir = dir.join("snapshot");
    if let Ok(bytes) = std::fs::read(&slot_file) {
        let f: SlotFile =
            serde_json::from_slice(&bytes).map_err(|e| Error::at(&slot_file, 1, format!("unreadable: {e}")))?;
        if cdc::slot_position(&spec).await?.is_none() {
            return Err(Error::at(
                &slot_file,
                1,
                format!(
                    "replication slot {} no longer exists in PostgreSQL, so the changes since it was last read are \
                     lost to spillway: remove {} to take a new snapshot",
                    f.slot,
                    store_dir.display()
                ),
            ));
        }
        let tables = f
            .tables
            .iter()
            .map(|t| {
                let identity = t.key.clone().map_or(Identity::Full, Identity::Key);
                CdcTable::from_columns(&t.name, TableName::new(Some(&t.schema), &t.table), &t.columns, identity)
            })
            .collect::<Vec<_>>();
        for (name, _) in &spec.tables {
            if !tables.iter().any(|t| &t.name == name) {
                return Err(Error::at(
                    &slot_file,
                    1,
                    format!("table {name} is followed now but was not when slot {} was made: remove {} to take a new snapshot of every table", f.slot, store_dir.display()),
                ));
            }
        }
        let snapshots = tables.iter().map(|t| (t.name.clone(), snap_dir.join(format!("{}.arrow", t.name)))).collect();
        return Ok(Slot { spec, tables, consistent_lsn: f.consistent_lsn, snapshots });
    }
    if !may_create {
        return Err(Error::Usage(format!(
            "{}: these views follow PostgreSQL and no `views serve` or `views apply` has made their slot {} yet: \
             run one of them first",
            store_dir.display(),
            spec.slot
        )));
    }
    let tables = cdc::describe(&spec).await?;
    if cdc::slot_position(&spec).await?.is_some() {
        if !creating.exists() {
            return Err(Error::Usage(format!(
                "replication slot {} already exists and this project did not make it: name another with `slot = ...` \
                 on the source, or drop it (SELECT pg_drop_replication_slot('{}'))",
                spec.slot, spec.slot
            )));
        }
        cdc::drop_slot(&spec).await?;
    }
    std::fs::create_dir_all(&snap_dir).map_err(|e| Error::io(&snap_dir, e))?;
    std::fs::write(&creating, b"").map_err(|e| Error::io(&creating, e))?;
    match make(&dir, &spec, tables).await {
        Ok(slot) => Ok(slot),
        Err(e) => {
            // Nothing left behind: a slot would make PostgreSQL keep WAL for nobody. (After a
            // crash instead, `creating` says the slot found at the next start is ours.)
            if let Err(d) = cdc::drop_slot(&spec).await {
                tracing::warn!(slot = %spec.slot, "dropping the slot after a failed start: {d}");
            }
            let _ = std::fs::remove_dir_all(&snap_dir);
            let _ = std::fs::remove_file(&creating);
            Err(e)
        }
    }
}

/// Makes the slot and its snapshot in `dir` (marked `creating`).
async fn make(dir: &Path, spec: &CdcSpec, tables: Vec<CdcTable>) -> Result<Slot> {
    let spec = spec.clone();
    let slot_file = dir.join("slot.json");
    let creating = dir.join("creating");
    let snap_dir = dir.join("snapshot");
    let tmp: Vec<PathBuf> = tables.iter().map(|t| snap_dir.join(format!(".{}.arrow.tmp", t.name))).collect();
    let mut writers = Vec::new();
    for (t, p) in tables.iter().zip(&tmp) {
        let f = std::fs::File::create(p).map_err(|e| Error::io(p, e))?;
        let w = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(f), &t.schema)
            .map_err(|e| Error::at(p, 1, e.to_string()))?;
        writers.push(w);
    }
    let mut write = |i: usize, b: RecordBatch| writers[i].write(&b).map_err(|e| e.to_string());
    let lsn = cdc::create(&spec, &tables, &mut write).await?;
    let mut snapshots = BTreeMap::new();
    for ((w, p), t) in writers.into_iter().zip(&tmp).zip(&tables) {
        let mut w = w;
        w.finish().map_err(|e| Error::at(p, 1, e.to_string()))?;
        let file = w.into_inner().map_err(|e| Error::at(p, 1, e.to_string()))?;
        let file = file.into_inner().map_err(|e| Error::io(p, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(p, e))?;
        let dest = snap_dir.join(format!("{}.arrow", t.name));
        std::fs::rename(p, &dest).map_err(|e| Error::io(&dest, e))?;
        snapshots.insert(t.name.clone(), dest);
    }
    spillway_tiers::durable::sync_dir(&snap_dir)?;
    let f = SlotFile {
        slot: spec.slot.clone(),
        publication: spec.publication.clone(),
        consistent_lsn: lsn,
        tables: tables
            .iter()
            .map(|t| TableFile {
                name: t.name.clone(),
                schema: t.table.schema.clone(),
                table: t.table.table.clone(),
                columns: t.columns(),
                key: match &t.identity {
                    Identity::Key(k) => Some(k.clone()),
                    Identity::Full => None,
                },
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&f).unwrap_or_default();
    spillway_tiers::durable::replace_synced(&slot_file, &text)?;
    let _ = std::fs::remove_file(&creating);
    tracing::info!(slot = %spec.slot, lsn, "replication slot made; snapshot read");
    Ok(Slot { spec, tables, consistent_lsn: lsn, snapshots })
}

/// A logical replication slot named `spillway...` in a database the project reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Its name.
    pub name: String,
    /// Whether a source of the project follows it.
    pub followed: bool,
    /// Whether a process is streaming from it now.
    pub active: bool,
    /// WAL it holds back, bytes.
    pub wal_held: u64,
}

/// Per database the project's `postgres` sources read (shown without password): the slots named
/// `spillway...` there, or why they could not be listed.
pub async fn slots(project: &Project) -> Vec<(String, std::result::Result<Vec<SlotInfo>, String>)> {
    let followed: std::collections::BTreeSet<String> =
        project.sources.values().filter_map(|d| d.cdc(&project.dir)).filter_map(|c| c.ok()).map(|c| c.slot).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for def in project.sources.values() {
        let spillway_project::SourceDef::Postgres { url, url_env, .. } = def else { continue };
        let conn = spillway_postgres::ConnSpec { url: url.clone(), url_env: url_env.clone() };
        let shown = conn.shown();
        if !seen.insert(shown.clone()) {
            continue;
        }
        let found = cdc::slots(&conn, "spillway").await.map(|v| {
            v.into_iter()
                .map(|(name, active, wal_held)| SlotInfo { followed: followed.contains(&name), name, active, wal_held })
                .collect()
        });
        out.push((shown, found));
    }
    out
}

/// `0/16B3748`, as PostgreSQL writes a WAL position.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
