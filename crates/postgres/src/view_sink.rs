//! A view kept in a PostgreSQL table: each view transaction is one PostgreSQL transaction that
//! changes the table and records, in the same transaction, which view transaction it holds.
//!
//! ```text
//!   replace  DELETE every row ─▶ COPY the view's rows          ─▶ progress ─▶ COMMIT
//!   upsert   COPY the change into a temp table ─▶ DELETE the keys it touches
//!            ─▶ INSERT its new rows                             ─▶ progress ─▶ COMMIT
//! ```
//!
//! Progress lives in `spillway_view_progress (sink, seq)` in the table's schema, keyed by the
//! target table's qualified name (not the sink's name, which another project may use for
//! another table of the same schema). A restart reads
//! it ([`progress`]): a sink that holds an older transaction than the views is republished
//! whole, so after any crash the table ends up holding exactly the view.

use crate::conn;
use crate::error::{Error, Result};
use crate::sink::{Mode, SinkSpec};
use crate::types::out_columns;
use crate::{quote_ident, TableName};
use arrow::array::RecordBatch;
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use tokio_postgres::Client;

/// The per-connection temporary table a change is staged in.
const STAGE: &str = "spillway_view_change";

/// The progress table's name.
pub const PROGRESS_TABLE: &str = "spillway_view_progress";

/// What one publication writes.
#[derive(Debug)]
pub enum Publication<'a> {
    /// The whole view (after population, a restart, or in `replace` mode).
    Whole(&'a RecordBatch),
    /// One transaction's change: rows that left (`retracted`) and rows that arrived
    /// (`inserted`), each with every column of the view.
    Change {
        /// Rows of negative weight.
        retracted: &'a RecordBatch,
        /// Rows of positive weight.
        inserted: &'a RecordBatch,
    },
}

fn fail(spec: &SinkSpec, message: impl Into<String>) -> Error {
    Error::Postgres { target: spec.target(), message: message.into() }
}

fn progress_table(spec: &SinkSpec) -> TableName {
    spec.table.sibling(PROGRESS_TABLE)
}

/// The progress row of `spec`'s table: its qualified name.
fn progress_key(spec: &SinkSpec) -> String {
    spec.table.sql()
}

/// The view transaction the table holds (`None`: never published, or no progress table).
pub async fn progress(spec: &SinkSpec) -> Result<Option<u64>> {
    let config = spec.conn.resolve().map_err(|m| fail(spec, m))?;
    let client = conn::connect(&config).await.map_err(|m| fail(spec, m))?;
    let p = progress_table(spec);
    let exists = client
        .query_one(
            "SELECT to_regclass($1)::oid IS NOT NULL AND to_regclass($2)::oid IS NOT NULL",
            &[&p.sql(), &spec.table.sql()],
        )
        .await
        .map_err(|e| fail(spec, conn::describe(&e)))?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_opt(&format!("SELECT seq FROM {} WHERE sink = $1", p.sql()), &[&progress_key(spec)])
        .await
        .map_err(|e| fail(spec, conn::describe(&e)))?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// A connection kept by a view sink between transactions.
pub struct ViewSink {
    spec: SinkSpec,
    client: Client,
    /// The table, the progress table and the stage exist (checked once per connection).
    ready: bool,
}

impl ViewSink {
    /// Connects.
    pub async fn connect(spec: &SinkSpec) -> Result<ViewSink> {
        let config = spec.conn.resolve().map_err(|m| fail(spec, m))?;
        let client = conn::connect(&config).await.map_err(|m| fail(spec, m))?;
        Ok(ViewSink { spec: spec.clone(), client, ready: false })
    }

    fn db(&self, e: tokio_postgres::Error) -> Error {
        fail(&self.spec, conn::describe(&e))
    }

    /// Writes `what` as view transaction `seq`, in one PostgreSQL transaction (creating the table,
    /// keyed by the sink's `key` with a unique index, when it does not exist).
    pub async fn publish(&mut self, seq: u64, what: Publication<'_>) -> Result<u64> {
        let result = self.publish_inner(seq, what).await;
        if result.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        result
    }

    async fn publish_inner(&mut self, seq: u64, what: Publication<'_>) -> Result<u64> {
        let spec = self.spec.clone();
        let schema = match &what {
            Publication::Whole(b) => b.schema(),
            Publication::Change { inserted, .. } => inserted.schema(),
        };
        let encoder = pgpq::ArrowToPostgresBinaryEncoder::try_new(&schema)
            .map_err(|e| fail(&spec, format!("the view's columns cannot be written with binary COPY: {e}")))?;
        let columns = out_columns(&schema, &encoder.schema()).map_err(|m| fail(&spec, m))?;
        for k in &spec.key {
            if !columns.iter().any(|c| &c.name == k) {
                return Err(fail(&spec, format!("key column {k} is not a column of the view")));
            }
        }
        self.client.batch_execute("BEGIN").await.map_err(|e| self.db(e))?;
        if !spec.synchronous_commit {
            self.client.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(|e| self.db(e))?;
        }
        let p = progress_table(&spec);
        if !self.ready {
            self.prepare(&columns).await?;
        }
        let names = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
        let rows = match what {
            Publication::Whole(batch) => {
                self.client
                    .batch_execute(&format!("DELETE FROM {}", spec.table.sql()))
                    .await
                    .map_err(|e| self.db(e))?;
                self.copy(&spec.table.sql(), &names, batch, encoder).await?
            }
            Publication::Change { retracted, inserted } => {
                if spec.mode != Mode::Upsert || spec.key.is_empty() {
                    return Err(fail(&spec, "a change is published only with mode = \"upsert\" and a key"));
                }
                let stage = quote_ident(STAGE);
                // The keys the change touches leave, then its new rows arrive.
                let key_eq = spec
                    .key
                    .iter()
                    .map(|k| format!("t.{0} IS NOT DISTINCT FROM s.{0}", quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let encoder2 = pgpq::ArrowToPostgresBinaryEncoder::try_new(&schema)
                    .map_err(|e| fail(&spec, format!("the view's columns cannot be written with binary COPY: {e}")))?;
                self.copy(&stage, &names, retracted, encoder).await?;
                self.copy(&stage, &names, inserted, encoder2).await?;
                let keys = spec.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
                // `=` lets PostgreSQL use the key's index; keys with a NULL go by `IS NOT DISTINCT
                // FROM` (an empty set when there is none, which ends that join at once).
                let eq =
                    spec.key.iter().map(|k| format!("t.{0} = s.{0}", quote_ident(k))).collect::<Vec<_>>().join(" AND ");
                let any_null =
                    spec.key.iter().map(|k| format!("{} IS NULL", quote_ident(k))).collect::<Vec<_>>().join(" OR ");
                self.client
                    .batch_execute(&format!(
                        "DELETE FROM {t} t USING (SELECT DISTINCT {keys} FROM {stage}) s WHERE {eq}; \
                         DELETE FROM {t} t USING (SELECT DISTINCT {keys} FROM {stage} WHERE {any_null}) s WHERE {key_eq}",
                        t = spec.table.sql()
                    ))
                    .await
                    .map_err(|e| self.db(e))?;
                self.client.batch_execute(&format!("TRUNCATE {stage}")).await.map_err(|e| self.db(e))?;
                let encoder3 = pgpq::ArrowToPostgresBinaryEncoder::try_new(&schema)
                    .map_err(|e| fail(&spec, format!("the view's columns cannot be written with binary COPY: {e}")))?;
                self.copy(&spec.table.sql(), &names, inserted, encoder3).await.map_err(|e| match e {
                    Error::Postgres { target, message } if message.contains("duplicate key") => Error::Postgres {
                        target,
                        message: format!(
                            "{message} (the view has two rows with one key ({}): a key must be unique in the view)",
                            spec.key.join(", ")
                        ),
                    },
                    e => e,
                })?
            }
        };
        spillway_faults::point("view-sink-before-commit");
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (sink, seq) VALUES ($1, $2) ON CONFLICT (sink) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()",
                    p.sql()
                ),
                &[&progress_key(&spec), &(seq as i64)],
            )
            .await
            .map_err(|e| self.db(e))?;
        self.client.batch_execute("COMMIT").await.map_err(|e| self.db(e))?;
        self.ready = true;
        Ok(rows)
    }

    /// Inside the transaction: the progress table, the target table (created keyed when
    /// missing) and this connection's staging table.
    async fn prepare(&self, columns: &[crate::types::OutColumn]) -> Result<()> {
        let spec = &self.spec;
        let p = progress_table(spec);
        self.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (sink text PRIMARY KEY, seq bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
                p.sql()
            ))
            .await
            .map_err(|e| self.db(e))?;
        let exists = self
            .client
            .query_one("SELECT to_regclass($1)::oid IS NOT NULL", &[&spec.table.sql()])
            .await
            .map_err(|e| self.db(e))?
            .get::<_, bool>(0);
        if !exists {
            let ddl = columns.iter().map(|c| format!("{} {}", quote_ident(&c.name), c.ddl)).collect::<Vec<_>>();
            self.client
                .batch_execute(&format!("CREATE TABLE {} ({})", spec.table.sql(), ddl.join(", ")))
                .await
                .map_err(|e| self.db(e))?;
            if !spec.key.is_empty() {
                let key = spec.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
                let index = quote_ident(&crate::truncate_ident(&format!("{}_key", spec.table.table)));
                self.client
                    .batch_execute(&format!(
                        "CREATE UNIQUE INDEX {index} ON {} ({key}) NULLS NOT DISTINCT",
                        spec.table.sql()
                    ))
                    .await
                    .map_err(|e| self.db(e))?;
            }
        }
        self.client
            .batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                quote_ident(STAGE),
                spec.table.sql()
            ))
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    async fn copy(
        &self,
        table_sql: &str,
        names: &str,
        batch: &RecordBatch,
        mut encoder: pgpq::ArrowToPostgresBinaryEncoder,
    ) -> Result<u64> {
        let sql = format!("COPY {table_sql} ({names}) FROM STDIN (FORMAT binary)");
        let sink = self.client.copy_in::<_, Bytes>(&sql).await.map_err(|e| self.db(e))?;
        let mut sink = std::pin::pin!(sink);
        let encode_err = |e: pgpq::error::ErrorKind| fail(&self.spec, format!("encoding rows for COPY failed: {e}"));
        let mut buf = BytesMut::new();
        encoder.write_header(&mut buf).map_err(encode_err)?;
        encoder.write_batch(batch, &mut buf).map_err(encode_err)?;
        encoder.write_footer(&mut buf).map_err(encode_err)?;
        sink.as_mut().send(buf.freeze()).await.map_err(|e| self.db(e))?;
        sink.as_mut().finish().await.map_err(|e| self.db(e))
    }
}
