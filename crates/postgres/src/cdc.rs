//! Change data capture: following PostgreSQL tables through a publication and a logical
//! replication slot.
//!
//! ```text
//!   describe   wal_level, each table's columns and replica identity (a key, or FULL)
//!   create     the publication (when missing), then CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT
//!              on a replication connection; each table is read with binary COPY inside that
//!              exported snapshot, so the rows read and the slot's first change meet exactly
//!   stream     START_REPLICATION from a durable position (binary pgoutput); rows are decoded
//!              into Arrow batches of the table's columns plus `_op` (insert/delete/upsert),
//!              at most `max_rows` a batch, then the transaction's Commit. The slot is told a
//!              position only through `ack`, once the caller has made it durable.
//! ```
//!
//! The replication protocol (connection, SCRAM, START_REPLICATION, standby feedback,
//! backpressure) is `pgwire-replication`'s; the row messages are decoded in [`crate::pgoutput`].

use crate::conn::{self, ConnSpec};
use crate::decode::{CopyDecoder, CDC_TEXT_TYPES};
use crate::error::{Error, Result};
use crate::pgoutput::{self, Field, Message};
use crate::types::ReadAs;
use crate::{quote_ident, quote_literal, TableName};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field as ArrowField, Schema, SchemaRef};
use futures::StreamExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// What to follow: tables of one database, through one publication and one slot (so that a
/// transaction touching several of them arrives as one transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcSpec {
    /// A name for messages (the sources, e.g. `orders, lineitem`).
    pub name: String,
    /// Where to connect.
    pub conn: ConnSpec,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// `(spillway's table name, PostgreSQL table)`.
    pub tables: Vec<(String, TableName)>,
}

impl CdcSpec {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::Postgres { target: format!("source {} (slot {})", self.name, self.slot), message: message.into() }
    }
}

/// How updates and deletes name the old row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// By these key columns (the primary key, or the replica identity index).
    Key(Vec<String>),
    /// By the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// One followed table as PostgreSQL describes it.
#[derive(Debug, Clone)]
pub struct CdcTable {
    /// spillway's name for it.
    pub name: String,
    /// The PostgreSQL table.
    pub table: TableName,
    /// Its columns as read (Arrow types of [`ReadAs`]).
    pub schema: SchemaRef,
    /// How each column is read.
    pub kinds: Vec<ReadAs>,
    /// Each column's type oid.
    pub oids: Vec<u32>,
    /// Each column's type modifier.
    pub typmods: Vec<i32>,
    /// How old rows are named.
    pub identity: Identity,
}

impl CdcTable {
    /// The table as [`describe`] found it, from its columns' `(name, type oid, modifier, NOT
    /// NULL)` (what a caller stores to follow the table as it was when its snapshot was read).
    pub fn from_columns(
        name: &str,
        table: TableName,
        columns: &[(String, u32, i32, bool)],
        identity: Identity,
    ) -> CdcTable {
        let kinds: Vec<ReadAs> = columns.iter().map(|(_, o, m, _)| ReadAs::for_type(*o, *m)).collect();
        let fields: Vec<ArrowField> =
            columns.iter().zip(&kinds).map(|((n, _, _, nn), k)| ArrowField::new(n, k.arrow(), !nn)).collect();
        CdcTable {
            name: name.to_string(),
            table,
            schema: Arc::new(Schema::new(fields)),
            kinds,
            oids: columns.iter().map(|c| c.1).collect(),
            typmods: columns.iter().map(|c| c.2).collect(),
            identity,
        }
    }

    /// Its columns' `(name, type oid, modifier, NOT NULL)`.
    pub fn columns(&self) -> Vec<(String, u32, i32, bool)> {
        self.schema
            .fields()
            .iter()
            .zip(self.oids.iter().zip(&self.typmods))
            .map(|(f, (o, m))| (f.name().clone(), *o, *m, !f.is_nullable()))
            .collect()
    }
}

/// Checks that the tables can be followed and describes them: `wal_level = logical`, each table
/// exists, has columns CDC reads, and a primary key or a replica identity.
pub async fn describe(spec: &CdcSpec) -> Result<Vec<CdcTable>> {
    let config = spec.conn.resolve().map_err(|m| spec.fail(m))?;
    let client = conn::connect(&config).await.map_err(|m| spec.fail(m))?;
    let db = |e: tokio_postgres::Error| spec.fail(conn::describe(&e));
    let wal: String = client.query_one("SHOW wal_level", &[]).await.map_err(db)?.get(0);
    if wal != "logical" {
        return Err(spec.fail(format!(
            "wal_level is {wal}: following changes needs wal_level = logical (postgresql.conf, then restart PostgreSQL)"
        )));
    }
    let mut out = Vec::new();
    for (name, table) in &spec.tables {
        let row = client
            .query_opt("SELECT relreplident::text FROM pg_class WHERE oid = to_regclass($1)", &[&table.sql()])
            .await
            .map_err(db)?
            .ok_or_else(|| spec.fail(format!("table {table} does not exist")))?;
        let ident: String = row.get(0);
        let cols = client
            .query(
                "SELECT attname::text, atttypid::int8, atttypmod, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&table.sql()],
            )
            .await
            .map_err(db)?;
        let mut fields = Vec::new();
        let mut kinds = Vec::new();
        let mut oids = Vec::new();
        let mut typmods = Vec::new();
        for c in &cols {
            let (col, oid, typmod, shown, not_null): (String, i64, i32, String, bool) =
                (c.get(0), c.get(1), c.get(2), c.get(3), c.get(4));
            let kind = ReadAs::for_type(oid as u32, typmod);
            if kind == ReadAs::CastText && !CDC_TEXT_TYPES.iter().any(|(o, _)| *o == oid as u32) {
                return Err(spec.fail(format!(
                    "table {table}, column {col}: type {shown} cannot be followed yet (CDC reads booleans, \
                     integers, floats, numeric, text, char, bytea, dates, times, timestamps, uuid and json)"
                )));
            }
            fields.push(ArrowField::new(col, kind.arrow(), !not_null));
            kinds.push(kind);
            oids.push(oid as u32);
            typmods.push(typmod);
        }
        let key_sql = |which: &str| {
            format!(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::text::regclass AND i.{which} \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)"
            )
        };
        let key = |which: &'static str| {
            let client = &client;
            let sql = key_sql(which);
            async move {
                let rows = client.query(&sql, &[&table.sql()]).await?;
                Ok::<Vec<String>, tokio_postgres::Error>(rows.iter().map(|r| r.get(0)).collect())
            }
        };
        let no_identity = || {
            spec.fail(format!(
                "table {table} has no primary key and no replica identity, so PostgreSQL does not say which row \
                 an update or a delete changed: add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL",
                table.sql()
            ))
        };
        let identity = match ident.as_str() {
            "f" => Identity::Full,
            "d" => {
                let k = key("indisprimary").await.map_err(db)?;
                if k.is_empty() {
                    return Err(no_identity());
                }
                Identity::Key(k)
            }
            "i" => Identity::Key(key("indisreplident").await.map_err(db)?),
            _ => return Err(no_identity()),
        };
        out.push(CdcTable {
            name: name.clone(),
            table: table.clone(),
            schema: Arc::new(Schema::new(fields)),
            kinds,
            oids,
            typmods,
            identity,
        });
    }
    Ok(out)
}

/// The slot's confirmed position, or `None` when it does not exist.
pub async fn slot_position(spec: &CdcSpec) -> Result<Option<u64>> {
    let config = spec.conn.resolve().map_err(|m| spec.fail(m))?;
    let client = conn::connect(&config).await.map_err(|m| spec.fail(m))?;
    let row = client
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn, restart_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(|e| spec.fail(conn::describe(&e)))?;
    match row {
        None => Ok(None),
        Some(r) => {
            let text: Option<String> = r.get(0);
            Ok(Some(text.and_then(|t| Lsn::parse(&t).ok()).map_or(0, |l| l.0)))
        }
    }
}

/// PostgreSQL's WAL position now (where the next record goes): every transaction committed
/// before this call ends at or before it, flushed to disk or not yet (`synchronous_commit = off`).
pub async fn current_lsn(spec: &CdcSpec) -> Result<u64> {
    let config = spec.conn.resolve().map_err(|m| spec.fail(m))?;
    let client = conn::connect(&config).await.map_err(|m| spec.fail(m))?;
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| spec.fail(conn::describe(&e)))?;
    let text: String = row.get(0);
    Lsn::parse(&text).map(|l| l.0).map_err(|e| spec.fail(format!("WAL position {text}: {}", e.0)))
}

/// The replication slots of the database whose name starts with `prefix`, with the WAL each
/// holds back (bytes from its restart position to the current WAL position).
pub async fn slots(conn: &ConnSpec, prefix: &str) -> std::result::Result<Vec<(String, bool, u64)>, String> {
    let config = conn.resolve()?;
    let client = conn::connect(&config).await?;
    let rows = client
        .query(
            "SELECT slot_name::text, active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 \
             FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() \
             AND starts_with(slot_name::text, $1) ORDER BY 1",
            &[&prefix],
        )
        .await
        .map_err(|e| conn::describe(&e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).max(0) as u64)).collect())
}

/// Drops the slot (when it exists and is not in use).
pub async fn drop_slot(spec: &CdcSpec) -> Result<()> {
    let config = spec.conn.resolve().map_err(|m| spec.fail(m))?;
    let client = conn::connect(&config).await.map_err(|m| spec.fail(m))?;
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(|e| spec.fail(conn::describe(&e)))?;
    Ok(())
}

/// Makes sure the publication publishes every table (creating it when missing).
async fn ensure_publication(spec: &CdcSpec, client: &Client) -> Result<()> {
    let db = |e: tokio_postgres::Error| spec.fail(conn::describe(&e));
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&spec.publication])
        .await
        .map_err(db)?
        .is_some();
    if !exists {
        let tables: Vec<String> = spec.tables.iter().map(|(_, t)| t.sql()).collect();
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&spec.publication),
                tables.join(", ")
            ))
            .await
            .map_err(db)?;
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&spec.publication],
        )
        .await
        .map_err(db)?;
    let published: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (_, t) in &spec.tables {
        if !published.iter().any(|(s, n)| *s == t.schema && *n == t.table) {
            return Err(spec.fail(format!(
                "publication {} does not publish {t}: run ALTER PUBLICATION {} ADD TABLE {} (or name another publication)",
                spec.publication,
                quote_ident(&spec.publication),
                t.sql()
            )));
        }
    }
    Ok(())
}

fn replication_config(spec: &CdcSpec, config: &Config) -> Result<ReplicationConfig> {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().ok_or_else(|| spec.fail("the connection URL names no user"))?.to_string();
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    let db = config.get_dbname().unwrap_or(&user).to_string();
    Ok(ReplicationConfig::new(host, user, password, db, spec.slot.clone(), spec.publication.clone())
        .with_port(port)
        .with_tls(TlsConfig::disabled())
        .with_application_name("spillway")
        .with_binary(true)
        .with_buffer_size(1024)
        .with_status_interval(Duration::from_secs(1)))
}

fn repl_err(spec: &CdcSpec, e: pgwire_replication::PgWireError) -> Error {
    spec.fail(format!("replication: {e}"))
}

/// Creates the publication (when missing) and the slot, and reads every table in the slot's
/// exported snapshot: `write(table index, batch)` gets each table's rows, in batches. Returns the
/// slot's consistent point, where streaming starts.
pub async fn create(
    spec: &CdcSpec,
    tables: &[CdcTable],
    write: &mut (dyn FnMut(usize, RecordBatch) -> std::result::Result<(), String> + Send),
) -> Result<u64> {
    let config = spec.conn.resolve().map_err(|m| spec.fail(m))?;
    let client = conn::connect(&config).await.map_err(|m| spec.fail(m))?;
    ensure_publication(spec, &client).await?;
    let mut repl =
        ReplicationClient::connect_gated(replication_config(spec, &config)?).await.map_err(|e| repl_err(spec, e))?;
    let rows = repl
        .simple_query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT", quote_ident(&spec.slot)))
        .await
        .map_err(|e| repl_err(spec, e))?;
    let text = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| spec.fail("CREATE_REPLICATION_SLOT answered without a position or snapshot"))
    };
    let lsn = Lsn::parse(&text(1)?).map_err(|e| spec.fail(format!("slot position: {}", e.0)))?.0;
    let snapshot = text(2)?;
    let db = |e: tokio_postgres::Error| spec.fail(conn::describe(&e));
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(db)?;
    client.batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(&snapshot))).await.map_err(db)?;
    for (i, t) in tables.iter().enumerate() {
        let cols: Vec<String> = t
            .schema
            .fields()
            .iter()
            .zip(&t.kinds)
            .map(|(f, k)| match k {
                ReadAs::CastText | ReadAs::Bpchar => format!("{}::text", quote_ident(f.name())),
                _ => quote_ident(f.name()),
            })
            .collect();
        let sql = format!("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)", cols.join(", "), t.table.sql());
        let stream = client.copy_out(&sql).await.map_err(db)?;
        futures::pin_mut!(stream);
        let mut dec = CopyDecoder::new(t.schema.clone(), &t.kinds);
        const BATCH: usize = 8192;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(db)?;
            let mut more = dec.push(&chunk, BATCH).map_err(|m| spec.fail(format!("reading {}: {m}", t.table)))?;
            loop {
                if dec.rows() >= BATCH {
                    let b = dec.take().map_err(|e| spec.fail(e.to_string()))?;
                    write(i, b).map_err(|m| spec.fail(m))?;
                }
                if !more {
                    break;
                }
                more = dec.push(&[], BATCH).map_err(|m| spec.fail(format!("reading {}: {m}", t.table)))?;
            }
        }
        if dec.rows() > 0 {
            let b = dec.take().map_err(|e| spec.fail(e.to_string()))?;
            write(i, b).map_err(|m| spec.fail(m))?;
        }
        if !dec.finished() {
            return Err(spec.fail(format!("reading {}: the COPY stream ended early", t.table)));
        }
    }
    client.batch_execute("COMMIT").await.map_err(db)?;
    repl.abort();
    Ok(lsn)
}

/// What the stream yields.
#[derive(Debug)]
pub enum CdcEvent {
    /// Changes to table `table` (an index into the described tables): its columns plus `_op`.
    Rows {
        /// The table.
        table: usize,
        /// The rows.
        batch: RecordBatch,
    },
    /// Tables emptied.
    Truncate {
        /// The tables.
        tables: Vec<usize>,
    },
    /// A table's columns changed: its later changes are not delivered.
    SchemaChanged {
        /// The table.
        table: usize,
        /// What changed, naming the column.
        problem: String,
    },
    /// The end of a source transaction: every change before it belongs to it.
    Commit {
        /// The position after the commit (what `ack` takes once it is durable).
        end_lsn: u64,
        /// The commit's time, microseconds since 1970.
        commit_us: i64,
    },
    /// PostgreSQL has sent every transaction that committed before `wal_end` (a keepalive
    /// between transactions): what a catch-up waits for.
    Position {
        /// The server's WAL position.
        wal_end: u64,
    },
}

struct Pending {
    table: usize,
    dec: CopyDecoder,
    ops: Vec<&'static str>,
}

/// A started replication stream.
pub struct CdcStream {
    spec: CdcSpec,
    tables: Vec<CdcTable>,
    client: ReplicationClient,
    relids: HashMap<u32, usize>,
    broken: Vec<bool>,
    skip_before: u64,
    skipping: bool,
    /// Between a Begin and its Commit.
    in_txn: bool,
    pending: Option<Pending>,
    out: VecDeque<CdcEvent>,
    max_rows: usize,
}

impl CdcStream {
    /// Starts streaming after `from` (the end of the last transaction made durable; the slot's
    /// consistent point at first). Transactions that committed before it are skipped.
    pub async fn start(spec: &CdcSpec, tables: Vec<CdcTable>, from: u64, max_rows: usize) -> Result<CdcStream> {
        let config = spec.conn.resolve().map_err(|m| spec.fail(m))?;
        let cfg = replication_config(spec, &config)?.with_start_lsn(Lsn(from)).with_ack_lsn(Lsn(from));
        // A process killed a moment ago may still hold the slot until PostgreSQL notices its
        // connection is gone (SQLSTATE 55006, object in use): wait for it, up to 30 s.
        let mut tries = 0;
        let client = loop {
            let mut client = ReplicationClient::connect(cfg.clone()).await.map_err(|e| repl_err(spec, e))?;
            match client.wait_started().await {
                Ok(()) => break client,
                Err(pgwire_replication::PgWireError::Server(m)) if m.contains("SQLSTATE 55006") && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(repl_err(spec, e)),
            }
        };
        let n = tables.len();
        Ok(CdcStream {
            spec: spec.clone(),
            tables,
            client,
            relids: HashMap::new(),
            broken: vec![false; n],
            skip_before: from,
            skipping: false,
            in_txn: false,
            pending: None,
            out: VecDeque::new(),
            max_rows: max_rows.max(1),
        })
    }

    /// Tells the slot that everything up to `lsn` is durable (it may then recycle that WAL).
    pub fn ack(&self, lsn: u64) {
        self.client.update_applied_lsn(Lsn(lsn));
    }

    /// The next event (cancel-safe: nothing is lost when the future is dropped while waiting).
    pub async fn next(&mut self) -> Result<CdcEvent> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Ok(e);
            }
            let ev = self.client.recv().await.map_err(|e| repl_err(&self.spec, e))?;
            let Some(ev) = ev else { return Err(self.spec.fail("the replication stream ended")) };
            self.handle(ev)?;
        }
    }

    /// Stops the stream.
    pub async fn stop(mut self) {
        let _ = self.client.shutdown().await;
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(mut p) = self.pending.take() {
            if p.dec.rows() > 0 {
                let rows = p.dec.take().map_err(|e| self.spec.fail(e.to_string()))?;
                let op: ArrayRef = Arc::new(StringArray::from(std::mem::take(&mut p.ops)));
                let mut fields: Vec<ArrowField> = rows.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(ArrowField::new("_op", arrow::datatypes::DataType::Utf8, false));
                let mut cols = rows.columns().to_vec();
                cols.push(op);
                let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
                    .map_err(|e| self.spec.fail(e.to_string()))?;
                self.out.push_back(CdcEvent::Rows { table: p.table, batch });
            }
        }
        Ok(())
    }

    fn row(&mut self, table: usize, op: &'static str, fields: &[Field<'_>], old: Option<&[Field<'_>]>) -> Result<()> {
        if self.pending.as_ref().is_some_and(|p| p.table != table || p.dec.rows() >= self.max_rows) {
            self.flush()?;
        }
        let t = &self.tables[table];
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            values.push(match f {
                Field::Null => None,
                Field::Value(v) => Some(v),
                Field::Unchanged => match old.and_then(|o| o.get(i)) {
                    Some(Field::Value(v)) => Some(v),
                    _ => {
                        return Err(self.spec.fail(format!(
                            "table {}, column {}: an update left a large (TOASTed) value unchanged and PostgreSQL \
                             did not send it; run ALTER TABLE {} REPLICA IDENTITY FULL so that it does",
                            t.table,
                            t.schema.field(i).name(),
                            t.table.sql()
                        )))
                    }
                },
            });
        }
        let pending = self.pending.get_or_insert_with(|| Pending {
            table,
            // A delete by key carries NULL in the other columns, NOT NULL or not.
            dec: CopyDecoder::new(nullable(&t.schema), &t.kinds),
            ops: Vec::new(),
        });
        pending
            .dec
            .push_row(&values, &t.kinds, &t.oids)
            .map_err(|m| Error::Postgres { target: format!("source {}", t.name), message: m })?;
        pending.ops.push(op);
        Ok(())
    }

    fn handle(&mut self, ev: ReplicationEvent) -> Result<()> {
        match ev {
            ReplicationEvent::Begin { final_lsn, .. } => {
                self.skipping = final_lsn.0 < self.skip_before;
                self.in_txn = true;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } if !self.in_txn => {
                self.out.push_back(CdcEvent::Position { wal_end: wal_end.0 });
            }
            ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                self.in_txn = false;
                if self.skipping {
                    self.skipping = false;
                    return Ok(());
                }
                self.flush()?;
                self.out.push_back(CdcEvent::Commit {
                    end_lsn: end_lsn.0,
                    commit_us: commit_time_micros + PG_EPOCH_MICROS,
                });
            }
            ReplicationEvent::XLogData { data, .. } if !self.skipping => {
                let msg = pgoutput::decode(&data).map_err(|m| self.spec.fail(m))?;
                match msg {
                    Message::Relation { relid, namespace, name, columns, .. } => {
                        let Some(i) =
                            self.tables.iter().position(|t| t.table.schema == namespace && t.table.table == name)
                        else {
                            return Ok(());
                        };
                        self.relids.insert(relid, i);
                        if let Some(problem) = schema_change(&self.tables[i], &columns) {
                            if !self.broken[i] {
                                self.broken[i] = true;
                                self.flush()?;
                                self.out.push_back(CdcEvent::SchemaChanged { table: i, problem });
                            }
                        }
                    }
                    Message::Insert { relid, new } => {
                        if let Some(t) = self.live(relid) {
                            self.row(t, "insert", &new, None)?;
                        }
                    }
                    Message::Update { relid, old, new } => {
                        if let Some(t) = self.live(relid) {
                            match (&self.tables[t].identity, &old) {
                                // The key changed (K) or the whole old row came (FULL): out, then in.
                                (_, Some(o)) => {
                                    self.row(t, "delete", o, None)?;
                                    self.row(t, "insert", &new, Some(o))?;
                                }
                                (Identity::Key(_), None) => self.row(t, "upsert", &new, None)?,
                                (Identity::Full, None) => {
                                    return Err(self.spec.fail(format!(
                                        "table {}: an update came without its old row although the table has \
                                         REPLICA IDENTITY FULL",
                                        self.tables[t].table
                                    )))
                                }
                            }
                        }
                    }
                    Message::Delete { relid, old } => {
                        if let Some(t) = self.live(relid) {
                            self.row(t, "delete", &old, None)?;
                        }
                    }
                    Message::Truncate { relids } => {
                        let tables: Vec<usize> = relids.iter().filter_map(|r| self.live(*r)).collect();
                        if !tables.is_empty() {
                            self.flush()?;
                            self.out.push_back(CdcEvent::Truncate { tables });
                        }
                    }
                    Message::Other(_) => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The table of `relid`, unless its schema changed.
    fn live(&self, relid: u32) -> Option<usize> {
        self.relids.get(&relid).copied().filter(|&i| !self.broken[i])
    }
}

/// `schema` with every column nullable.
fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()))
}

/// How a Relation message's columns differ from the table's as described, naming the column.
fn schema_change(table: &CdcTable, columns: &[pgoutput::RelColumn]) -> Option<String> {
    let have: Vec<(&str, u32, i32)> = table
        .schema
        .fields()
        .iter()
        .zip(table.oids.iter().zip(&table.typmods))
        .map(|(f, (oid, typmod))| (f.name().as_str(), *oid, *typmod))
        .collect();
    for c in columns {
        match have.iter().find(|(n, _, _)| *n == c.name) {
            None => return Some(format!("table {}: column {} was added", table.table, c.name)),
            Some((_, oid, _)) if *oid != c.type_oid => {
                return Some(format!(
                    "table {}: column {} changed type (oid {oid} → {})",
                    table.table, c.name, c.type_oid
                ))
            }
            // The same type with another modifier (numeric(12,2) → numeric(14,4), varchar(10)
            // → varchar(20)): values would be decoded at the old scale.
            Some((_, _, typmod)) if *typmod != c.typmod => {
                return Some(format!(
                    "table {}: column {} changed its type modifier (typmod {typmod} → {})",
                    table.table, c.name, c.typmod
                ))
            }
            Some(_) => {}
        }
    }
    for (n, _, _) in &have {
        if !columns.iter().any(|c| c.name == *n) {
            return Some(format!("table {}: column {n} was dropped (or renamed)", table.table));
        }
    }
    if columns.iter().map(|c| c.name.as_str()).ne(have.iter().map(|(n, _, _)| *n)) {
        return Some(format!("table {}: its columns were reordered", table.table));
    }
    None
}
