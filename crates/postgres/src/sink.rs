//! Loading a model's output into a PostgreSQL table, in one transaction per load.
//!
//! ```text
//! replace: BEGIN ─▶ CREATE TABLE new ─▶ COPY new FROM STDIN (FORMAT binary, FREEZE) ─▶ key, indexes
//!          ─▶ DROP TABLE old ─▶ RENAME new ─▶ COMMIT          readers see the old table, then the new
//! append:  BEGIN ─▶ COPY t FROM STDIN (FORMAT binary) ─▶ COMMIT
//! upsert:  BEGIN ─▶ COPY into a temp table ─▶ INSERT INTO t .. ON CONFLICT (key) DO UPDATE ─▶ COMMIT
//! ```
//!
//! A missing table is created from the Arrow schema (key and indexes after the load, which is
//! faster than maintaining them during it); an existing one must have every model column with a
//! matching type, or the load stops before any row is sent, listing each mismatch. Nothing is
//! committed until the end, so any failure leaves the previous table as it was and no staging
//! table behind. One transaction rules out loading through several connections at once: see
//! `docs/postgres.md` for the measurement that made that an easy choice.

use crate::conn::{self, ConnSpec};
use crate::error::{Error, Result};
use crate::types::{out_columns, OutColumn};
use crate::{quote_ident, truncate_ident, TableName};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::{Bytes, BytesMut};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::Client;

/// Bytes of COPY data sent at a time.
const CHUNK: usize = 1 << 20;

/// The type a column is loaded as when PostgreSQL cannot hold it as it is: nanoseconds become
/// microseconds (PostgreSQL's precision; DataFusion's `date_trunc` and `now()` give nanoseconds),
/// dictionary-encoded columns their values.
fn loadable_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone())),
        DataType::Time64(TimeUnit::Nanosecond) => Some(DataType::Time64(TimeUnit::Microsecond)),
        DataType::Dictionary(_, values) => Some(loadable_type(values).unwrap_or_else(|| values.as_ref().clone())),
        _ => None,
    }
}

/// `input` with every column PostgreSQL cannot hold as it is cast to [`loadable_type`].
fn pg_compatible(input: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = input.schema();
    if schema.fields().iter().all(|f| loadable_type(f.data_type()).is_none()) {
        return input;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match loadable_type(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    let target: SchemaRef = Arc::new(Schema::new(fields));
    let out = target.clone();
    let batches = input.map(move |batch| {
        let batch = batch?;
        let columns =
            batch
                .columns()
                .iter()
                .zip(out.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        arrow::compute::cast(c, f.data_type())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(out.clone(), columns)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(target, batches))
}

/// What a load does to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Replace the table's contents atomically (a new table swapped in by name).
    #[default]
    Replace,
    /// Add the rows.
    Append,
    /// Insert new keys, update existing ones (needs `key`).
    Upsert,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "replace" => Ok(Mode::Replace),
            "append" => Ok(Mode::Append),
            "upsert" => Ok(Mode::Upsert),
            _ => Err(format!("mode = {s:?}: use replace, append or upsert")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Replace => "replace",
            Mode::Append => "append",
            Mode::Upsert => "upsert",
        })
    }
}

/// One `[sinks.NAME] type = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// The sink's name (in messages).
    pub name: String,
    /// Where to connect.
    pub conn: ConnSpec,
    /// The target table.
    pub table: TableName,
    /// What the load does.
    pub mode: Mode,
    /// Key columns: the primary key of a created table, and the conflict target of `upsert`.
    pub key: Vec<String>,
    /// Indexes to build after the load, each a list of columns.
    pub indexes: Vec<Vec<String>>,
    /// Create the table `UNLOGGED` (no WAL, emptied after a crash: for scratch tables).
    pub unlogged: bool,
    /// `false` sets `synchronous_commit = off` for the load's transaction.
    pub synchronous_commit: bool,
    /// `replace` only: a table whose columns differ is replaced by one with the model's columns
    /// instead of failing.
    pub recreate_on_schema_change: bool,
    /// `replace` only: COPY streams (connections) loading the new table at once. Above 1 the
    /// new table is committed before it is filled (see [`load`]).
    pub streams: usize,
}

impl SinkSpec {
    /// A replace-mode sink with default options.
    pub fn new(name: impl Into<String>, conn: ConnSpec, table: TableName) -> Self {
        Self {
            name: name.into(),
            conn,
            table,
            mode: Mode::Replace,
            key: vec![],
            indexes: vec![],
            unlogged: false,
            synchronous_commit: true,
            recreate_on_schema_change: false,
            streams: 1,
        }
    }

    /// `sink NAME → schema.table`, as errors name it.
    pub fn target(&self) -> String {
        format!("sink {} → {}", self.name, self.table)
    }

    /// Checks the options against each other (before connecting).
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == Mode::Upsert && self.key.is_empty() {
            return Err("mode = \"upsert\" needs `key` (the columns a row is matched on)".into());
        }
        if self.recreate_on_schema_change && self.mode != Mode::Replace {
            return Err("on_schema_change = \"recreate\" only applies to mode = \"replace\"".into());
        }
        if self.streams == 0 || (self.streams > 1 && self.mode != Mode::Replace) {
            return Err(
                "streams must be 1, or more with mode = \"replace\" (append and upsert load in one transaction)".into(),
            );
        }
        Ok(())
    }
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Rows loaded (as PostgreSQL counted them).
    pub rows: u64,
    /// Bytes of binary COPY data sent.
    pub bytes: u64,
    /// WAL written on the server while loading (includes other sessions' writes meanwhile).
    pub wal_bytes: Option<u64>,
    /// Whether the table was created by this load.
    pub created: bool,
    /// Wall time, connecting to commit.
    pub elapsed_ms: u64,
    /// Where it went, without the password: `user@host:port/db schema.table`.
    pub destination: String,
}

/// Loads every batch of `input` as `spec` says; commits only when all arrived
/// ([`prepare`] then [`PreparedLoad::commit`]).
pub async fn load(spec: &SinkSpec, input: SendableRecordBatchStream) -> Result<LoadReport> {
    prepare(spec, input).await?.commit().await
}

/// A load whose rows are all in PostgreSQL, in a transaction not yet committed: nothing of it is
/// visible to other sessions. [`PreparedLoad::commit`] publishes it; dropping it (or
/// [`PreparedLoad::rollback`]) leaves the table as it was. The pipeline stages a model's file
/// sinks, prepares its PostgreSQL loads, and commits them only once every sink is ready.
pub struct PreparedLoad {
    client: Client,
    name: String,
    table: TableName,
    target: String,
    /// A parallel replace's staging table: dropped on rollback, its advisory lock released.
    stage: Option<TableName>,
    rows: u64,
    bytes: u64,
    created: bool,
    wal_before: Option<u64>,
    started: Instant,
    destination: String,
}

impl std::fmt::Debug for PreparedLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedLoad").field("target", &self.target).field("rows", &self.rows).finish_non_exhaustive()
    }
}

impl PreparedLoad {
    /// The sink and table, as errors name them.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Commits the load: from now on readers see the new rows.
    pub async fn commit(self) -> Result<LoadReport> {
        let db =
            |e: tokio_postgres::Error| Error::Postgres { target: self.target.clone(), message: conn::describe(&e) };
        spillway_faults::point("postgres-before-commit");
        self.client.batch_execute("COMMIT").await.map_err(db)?;
        if let Some(stage) = &self.stage {
            let _ = self.client.query_one("SELECT pg_advisory_unlock(hashtext($1))", &[&stage.table]).await;
        }
        let wal_bytes = match (self.wal_before, wal_lsn(&self.client).await) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let (rows, bytes) = (self.rows, self.bytes);
        tracing::info!(sink = %self.name, table = %self.table, rows, bytes, ?wal_bytes, "loaded into PostgreSQL");
        Ok(LoadReport {
            rows,
            bytes,
            wal_bytes,
            created: self.created,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            destination: self.destination,
        })
    }

    /// Rolls the load back (best effort: a dead connection rolls back on the server anyway).
    pub async fn rollback(self) {
        let _ = self.client.batch_execute("ROLLBACK").await;
        if let Some(stage) = &self.stage {
            let _ = self.client.batch_execute(&format!("DROP TABLE IF EXISTS {}", stage.sql())).await;
            let _ = self.client.query_one("SELECT pg_advisory_unlock(hashtext($1))", &[&stage.table]).await;
        }
    }
}

/// Sends every batch of `input` as `spec` says and stops just before COMMIT.
pub async fn prepare(spec: &SinkSpec, input: SendableRecordBatchStream) -> Result<PreparedLoad> {
    let target = spec.target();
    let fail = |message: String| Error::Postgres { target: target.clone(), message };
    spec.validate().map_err(fail)?;
    let input = pg_compatible(input);
    let schema = input.schema();
    let encoder = pgpq::ArrowToPostgresBinaryEncoder::try_new(&schema)
        .map_err(|e| fail(format!("the model's columns cannot be written with binary COPY: {e}")))?;
    let columns = out_columns(&schema, &encoder.schema()).map_err(fail)?;
    for c in spec.key.iter().chain(spec.indexes.iter().flatten()) {
        if !columns.iter().any(|o| &o.name == c) {
            return Err(fail(format!("key/index column {c:?} is not a column of the model")));
        }
    }
    let config = spec.conn.resolve().map_err(fail)?;
    let destination = format!("{} {}", conn::redacted(&config), spec.table);
    let started = Instant::now();
    let client = conn::connect(&config).await.map_err(fail)?;
    let wal_before = wal_lsn(&client).await;
    let (rows, bytes, created, stage) = if spec.mode == Mode::Replace && spec.streams > 1 {
        parallel_replace(&client, &config, spec, &columns, input, &target).await?
    } else {
        let (rows, bytes, created) = one_transaction(&client, spec, &columns, input, encoder, &target).await?;
        (rows, bytes, created, None)
    };
    Ok(PreparedLoad {
        client,
        name: spec.name.clone(),
        table: spec.table.clone(),
        target,
        stage,
        rows,
        bytes,
        created,
        wal_before,
        started,
        destination,
    })
}

/// The whole load in one transaction on `client` (every mode; `streams = 1`), left open for the
/// caller to commit.
async fn one_transaction(
    client: &Client,
    spec: &SinkSpec,
    columns: &[OutColumn],
    input: SendableRecordBatchStream,
    encoder: pgpq::ArrowToPostgresBinaryEncoder,
    target: &str,
) -> Result<(u64, u64, bool)> {
    let fail = |message: String| Error::Postgres { target: target.to_string(), message };
    let db = |e: tokio_postgres::Error| fail(conn::describe(&e));
    client.batch_execute("BEGIN").await.map_err(db)?;
    if !spec.synchronous_commit {
        client.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(db)?;
    }
    let existing = check_existing(client, spec, columns, target).await?;
    let mut load = Loader { client, spec, columns, target };
    let created = existing.is_none();
    let (rows, bytes) = match (spec.mode, existing.is_some()) {
        (Mode::Replace, _) | (Mode::Append | Mode::Upsert, false) => {
            // A new table: created, filled and indexed in this transaction. Replace builds it
            // beside the old one and swaps names at the end.
            let replacing = spec.mode == Mode::Replace && existing.is_some();
            let into = if replacing {
                spec.table.sibling(&format!("__spillway_new_{}", spec.table.table))
            } else {
                spec.table.clone()
            };
            load.create(&into).await?;
            let copied = load.copy(&into, true, input, encoder).await?;
            let key = load.add_key(&into).await?;
            let indexes = load.index(&into).await?;
            if replacing {
                load.swap(&into, key, indexes).await?;
            }
            copied
        }
        (Mode::Append, true) => {
            let copied = load.copy(&spec.table, false, input, encoder).await?;
            load.index(&spec.table).await?;
            copied
        }
        (Mode::Upsert, true) => {
            load.check_unique_key().await?;
            let stage = TableName { schema: String::new(), table: format!("__spillway_upsert_{}", std::process::id()) };
            let cols = column_ddl(columns);
            client
                .batch_execute(&format!("CREATE TEMP TABLE {} ({cols}) ON COMMIT DROP", quote_ident(&stage.table)))
                .await
                .map_err(db)?;
            let (_, bytes) = load.copy(&stage, false, input, encoder).await?;
            let names = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
            let key = spec.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !spec.key.contains(&c.name))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
                .collect();
            let action = if updates.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            let merged = client
                .execute(
                    &format!(
                        "INSERT INTO {} ({names}) SELECT {names} FROM {} ON CONFLICT ({key}) {action}",
                        spec.table.sql(),
                        quote_ident(&stage.table)
                    ),
                    &[],
                )
                .await
                .map_err(db)?;
            load.index(&spec.table).await?;
            (merged, bytes)
        }
    };
    Ok((rows, bytes, created))
}

/// `replace` through `spec.streams` connections at once. Separate connections cannot share a
/// transaction, so the new table is created and committed first (under a unique name, with a
/// session advisory lock held on that name for the whole load), filled by every stream in its own
/// transaction, then keyed, indexed and swapped in one transaction as in [`one_transaction`],
/// left open for the caller to commit (the staging table is returned: its lock is released after
/// COMMIT). A failure drops it; a crash leaves it, and the next parallel load into the same
/// schema drops every staging table whose lock nobody holds.
async fn parallel_replace(
    client: &Client,
    config: &tokio_postgres::Config,
    spec: &SinkSpec,
    columns: &[OutColumn],
    input: SendableRecordBatchStream,
    target: &str,
) -> Result<(u64, u64, bool, Option<TableName>)> {
    let fail = |message: String| Error::Postgres { target: target.to_string(), message };
    let db = |e: tokio_postgres::Error| fail(conn::describe(&e));
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() % 1_000_000_000);
    let stage = spec.table.sibling(&format!("{STAGE_PREFIX}{}_{nonce}_{}", std::process::id(), spec.table.table));
    client.query_one("SELECT pg_advisory_lock(hashtext($1))", &[&stage.table]).await.map_err(db)?;
    sweep_stages(client, &spec.table.schema).await.map_err(db)?;
    let existing = check_existing(client, spec, columns, target).await?;
    let load = Loader { client, spec, columns, target };
    load.create(&stage).await?;
    let result = async {
        let (rows, bytes) = copy_streams(config, spec, columns, &stage, input, target).await?;
        client.batch_execute("BEGIN").await.map_err(db)?;
        if !spec.synchronous_commit {
            client.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(db)?;
        }
        let key = load.add_key(&stage).await?;
        let indexes = load.index(&stage).await?;
        if existing.is_some() {
            load.swap(&stage, key, indexes).await?;
        } else {
            load.rename(&stage, key, indexes).await?;
        }
        Ok((rows, bytes, existing.is_none()))
    }
    .await;
    match result {
        Ok((rows, bytes, created)) => Ok((rows, bytes, created, Some(stage))),
        Err(e) => {
            // Best effort: a dead connection leaves it for the next load's sweep.
            let _ = client.batch_execute(&format!("ROLLBACK; DROP TABLE IF EXISTS {}", stage.sql())).await;
            let _ = client.query_one("SELECT pg_advisory_unlock(hashtext($1))", &[&stage.table]).await;
            Err(e)
        }
    }
}

/// Staging tables of parallel loads start with this.
const STAGE_PREFIX: &str = "__spillway_stage_";

/// Drops the staging tables in `schema` whose loads are gone (their advisory lock is free).
async fn sweep_stages(client: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' AND starts_with(c.relname::text, $2)",
            &[&schema, &STAGE_PREFIX],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let free: bool = client.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&name]).await?.get(0);
        if free {
            tracing::info!(table = %name, "dropping a staging table left by a load that did not finish");
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}.{}", quote_ident(schema), quote_ident(&name)))
                .await?;
            client.query_one("SELECT pg_advisory_unlock(hashtext($1))", &[&name]).await?;
        }
    }
    Ok(())
}

/// Spreads `input`'s batches over `spec.streams` connections, each COPYing into `stage` in its
/// own transaction; returns (rows, bytes sent).
async fn copy_streams(
    config: &tokio_postgres::Config,
    spec: &SinkSpec,
    columns: &[OutColumn],
    stage: &TableName,
    mut input: SendableRecordBatchStream,
    target: &str,
) -> Result<(u64, u64)> {
    let fail = |message: String| Error::Postgres { target: target.to_string(), message };
    let schema = input.schema();
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..spec.streams {
        let (tx, rx) = futures::channel::mpsc::channel::<datafusion::error::Result<RecordBatch>>(2);
        senders.push(tx);
        let schema = schema.clone();
        workers.push(async move {
            let client = conn::connect(config).await.map_err(fail)?;
            let db = |e: tokio_postgres::Error| fail(conn::describe(&e));
            client.batch_execute("BEGIN").await.map_err(db)?;
            if !spec.synchronous_commit {
                client.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(db)?;
            }
            let encoder = pgpq::ArrowToPostgresBinaryEncoder::try_new(&schema)
                .map_err(|e| fail(format!("the model's columns cannot be written with binary COPY: {e}")))?;
            let mut load = Loader { client: &client, spec, columns, target };
            let copied = load.copy(stage, false, Box::pin(RecordBatchStreamAdapter::new(schema, rx)), encoder).await?;
            client.batch_execute("COMMIT").await.map_err(db)?;
            Ok::<_, Error>(copied)
        });
    }
    let dispatch = async move {
        let (mut i, n) = (0, senders.len());
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| Error::Input { target: target.to_string(), source })?;
            // A closed channel means that stream failed: its error is the one reported.
            let _ = senders[i % n].send(Ok(batch)).await;
            i += 1;
        }
        Ok::<_, Error>(())
    };
    let (_, copied) = futures::future::try_join(dispatch, futures::future::try_join_all(workers)).await?;
    Ok(copied.iter().fold((0, 0), |(r, b), (rows, bytes)| (r + rows, b + bytes)))
}

/// The existing table's columns after checking they fit the model's (`None`: no table).
async fn check_existing(
    client: &Client,
    spec: &SinkSpec,
    columns: &[OutColumn],
    target: &str,
) -> Result<Option<Vec<PgColumn>>> {
    let fail = |message: String| Error::Postgres { target: target.to_string(), message };
    let existing = table_columns(client, &spec.table).await.map_err(|e| fail(conn::describe(&e)))?;
    if let Some(have) = &existing {
        if !(spec.mode == Mode::Replace && spec.recreate_on_schema_change) {
            let problems = mismatches(columns, have);
            if !problems.is_empty() {
                return Err(fail(format!(
                    "the table's columns do not match the model's (nothing was loaded):\n{}",
                    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
                )));
            }
        }
    }
    Ok(existing)
}

/// The steps of one load, inside its transaction.
struct Loader<'a> {
    client: &'a Client,
    spec: &'a SinkSpec,
    columns: &'a [OutColumn],
    target: &'a str,
}

impl Loader<'_> {
    fn fail(&self, message: String) -> Error {
        Error::Postgres { target: self.target.to_string(), message }
    }

    fn db(&self, e: tokio_postgres::Error) -> Error {
        self.fail(conn::describe(&e))
    }

    async fn create(&self, table: &TableName) -> Result<()> {
        let unlogged = if self.spec.unlogged { "UNLOGGED " } else { "" };
        let sql = format!("CREATE {unlogged}TABLE {} ({})", table.sql(), column_ddl(self.columns));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.fail(format!("cannot create the table: {}", conn::describe(&e))))
    }

    /// Streams `input` into `table`; returns (rows, bytes sent).
    async fn copy(
        &mut self,
        table: &TableName,
        freeze: bool,
        mut input: SendableRecordBatchStream,
        mut encoder: pgpq::ArrowToPostgresBinaryEncoder,
    ) -> Result<(u64, u64)> {
        let names = self.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
        let table_sql = if table.schema.is_empty() { quote_ident(&table.table) } else { table.sql() };
        let freeze = if freeze { ", FREEZE" } else { "" };
        let sql = format!("COPY {table_sql} ({names}) FROM STDIN (FORMAT binary{freeze})");
        let sink = self.client.copy_in::<_, Bytes>(&sql).await.map_err(|e| self.db(e))?;
        let mut sink = std::pin::pin!(sink);
        let encode_err = |e: pgpq::error::ErrorKind| self.fail(format!("encoding rows for COPY failed: {e}"));
        let mut buf = BytesMut::with_capacity(2 * CHUNK);
        encoder.write_header(&mut buf).map_err(encode_err)?;
        let mut bytes = 0u64;
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|source| Error::Input { target: self.target.to_string(), source })?;
            encoder.write_batch(&batch, &mut buf).map_err(encode_err)?;
            if buf.len() >= CHUNK {
                spillway_faults::point("postgres-copy");
                bytes += buf.len() as u64;
                sink.as_mut().send(buf.split().freeze()).await.map_err(|e| self.copy_failed(e))?;
            }
        }
        encoder.write_footer(&mut buf).map_err(encode_err)?;
        spillway_faults::point("postgres-copy");
        bytes += buf.len() as u64;
        sink.as_mut().send(buf.split().freeze()).await.map_err(|e| self.copy_failed(e))?;
        let rows = sink.as_mut().finish().await.map_err(|e| self.copy_failed(e))?;
        Ok((rows, bytes))
    }

    /// Drops the old table and renames `into` (with its key and indexes) to take its place.
    async fn swap(
        &self,
        into: &TableName,
        key: Option<(String, String)>,
        indexes: Vec<(String, String)>,
    ) -> Result<()> {
        self.client
            .batch_execute(&format!("DROP TABLE {}", self.spec.table.sql()))
            .await
            .map_err(|e| self.fail(format!("cannot replace the table: {}", conn::describe(&e))))?;
        self.rename(into, key, indexes).await
    }

    /// Renames `into`, its key and its indexes to their final names.
    async fn rename(
        &self,
        into: &TableName,
        key: Option<(String, String)>,
        indexes: Vec<(String, String)>,
    ) -> Result<()> {
        let table = &self.spec.table;
        let mut sql = format!("ALTER TABLE {} RENAME TO {};", into.sql(), quote_ident(&table.table));
        if let Some((temp, name)) = key {
            sql.push_str(&format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {};",
                table.sql(),
                quote_ident(&temp),
                quote_ident(&name)
            ));
        }
        for (temp, name) in indexes {
            sql.push_str(&format!(
                "ALTER INDEX {}.{} RENAME TO {};",
                quote_ident(&table.schema),
                quote_ident(&temp),
                quote_ident(&name)
            ));
        }
        self.client.batch_execute(&sql).await.map_err(|e| self.db(e))
    }

    fn copy_failed(&self, e: tokio_postgres::Error) -> Error {
        self.fail(format!("COPY failed, nothing was committed: {}", conn::describe(&e)))
    }

    /// Adds the key to a table this load created, after its rows are in (cheaper than keeping
    /// the index up to date row by row); returns (name built, final name).
    async fn add_key(&self, table: &TableName) -> Result<Option<(String, String)>> {
        if self.spec.key.is_empty() {
            return Ok(None);
        }
        let name = truncate_ident(&format!("{}_pkey", self.spec.table.table));
        let temp = truncate_ident(&format!("{}_pkey", table.table));
        let list = self.spec.key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let sql = format!("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({list})", table.sql(), quote_ident(&temp));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.fail(format!("adding the primary key ({list}): {}", conn::describe(&e))))?;
        Ok(Some((temp, name)))
    }

    /// Builds the sink's indexes (those missing); returns (name built, final name).
    async fn index(&self, table: &TableName) -> Result<Vec<(String, String)>> {
        let mut built = Vec::new();
        for cols in &self.spec.indexes {
            let name = truncate_ident(&format!("{}_{}_idx", self.spec.table.table, cols.join("_")));
            let temp = truncate_ident(&format!("{}_{}", table.table, name));
            let list = cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
            let built_as = if table == &self.spec.table { &name } else { &temp };
            let sql = format!("CREATE INDEX IF NOT EXISTS {} ON {} ({list})", quote_ident(built_as), table.sql());
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| self.fail(format!("building index on ({list}): {}", conn::describe(&e))))?;
            if table != &self.spec.table {
                built.push((temp, name));
            }
        }
        Ok(built)
    }

    /// `upsert` into an existing table needs a unique index on exactly the key columns.
    async fn check_unique_key(&self) -> Result<()> {
        let rows = self
            .client
            .query(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique GROUP BY i.indexrelid",
                &[&self.spec.table.sql()],
            )
            .await
            .map_err(|e| self.db(e))?;
        let mut key = self.spec.key.clone();
        key.sort();
        if rows.iter().any(|r| r.get::<_, Vec<String>>(0) == key) {
            return Ok(());
        }
        Err(self.fail(format!(
            "upsert needs a primary key or unique index on ({}) in the table; add one, or load with mode = \"replace\"",
            self.spec.key.join(", ")
        )))
    }
}

/// `"a" bigint, "b" text`.
fn column_ddl(columns: &[OutColumn]) -> String {
    columns.iter().map(|c| format!("{} {}", quote_ident(&c.name), c.ddl)).collect::<Vec<_>>().join(", ")
}

/// A column of an existing table.
#[derive(Debug, Clone)]
struct PgColumn {
    name: String,
    oid: u32,
    shown: String,
    required: bool,
}

/// The columns of `table`, or `None` when it does not exist.
async fn table_columns(client: &Client, table: &TableName) -> Result<Option<Vec<PgColumn>>, tokio_postgres::Error> {
    let exists = client.query_one("SELECT to_regclass($1)::oid IS NOT NULL", &[&table.sql()]).await?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT attname::text, atttypid::int8, format_type(atttypid, atttypmod), attnotnull AND NOT atthasdef \
             FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table.sql()],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| PgColumn { name: r.get(0), oid: r.get::<_, i64>(1) as u32, shown: r.get(2), required: r.get(3) })
            .collect(),
    ))
}

/// Every way `want` (the model's columns) does not fit `have` (the table's).
fn mismatches(want: &[OutColumn], have: &[PgColumn]) -> Vec<String> {
    let mut problems = Vec::new();
    for w in want {
        match have.iter().find(|h| h.name == w.name) {
            None => problems.push(format!("{}: the model has it ({}), the table does not", w.name, w.arrow)),
            Some(h) if !w.accepts.contains(&h.oid) => problems.push(format!(
                "{}: the model gives {} (written as {}), the table has {}",
                w.name, w.arrow, w.ddl, h.shown
            )),
            Some(_) => {}
        }
    }
    for h in have.iter().filter(|h| h.required && !want.iter().any(|w| w.name == h.name)) {
        problems.push(format!(
            "{}: NOT NULL without a default in the table ({}), and the model does not give it",
            h.name, h.shown
        ));
    }
    problems
}

/// The server's WAL insert position, in bytes.
async fn wal_lsn(client: &Client) -> Option<u64> {
    let row = client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8", &[]).await.ok()?;
    Some(row.get::<_, i64>(0) as u64)
}
