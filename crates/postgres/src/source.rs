//! A PostgreSQL table or query as a DataFusion table.
//!
//! Scanning runs `COPY (SELECT <projected columns> FROM <table> WHERE <pushed filters>) TO STDOUT
//! (FORMAT binary)` and decodes the stream into batches of the session's batch size as it
//! arrives. The decoder's buffers are charged to the session's memory pool (the model's lease)
//! as `PostgresScan[NAME]`; at most two decoded batches wait for the query to take them.
//!
//! Filters pushed down: `col <op> literal` (=, <>, <, <=, >, >=), `IS [NOT] NULL`, `BETWEEN`,
//! `IN (...)`, and `AND`/`OR` of those, on columns PostgreSQL compares the way DataFusion compares
//! what is read ([`ReadAs::compares_like_datafusion`]): not on floats or unconstrained numerics,
//! not on text under a nondeterministic collation (where `'a' <> 'A'` may be false). Text ranges
//! compare with `COLLATE "C"` (byte order, as DataFusion does); `char(n)` is read, and filtered,
//! as its `::text` (trailing blanks removed, PostgreSQL's own reading of a `char(n)`). All are
//! marked inexact, so DataFusion applies them again: a pushed filter only saves the transfer, and
//! since PostgreSQL keeps every row DataFusion's filter keeps, it never decides the answer.

use crate::conn::{self, ConnSpec};
use crate::decode::CopyDecoder;
use crate::error::{Error, Result};
use crate::types::ReadAs;
use crate::{quote_ident, quote_literal, TableName};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use tokio_postgres::Config;

/// One `[sources.NAME] type = "postgres"`: a table, or a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// The source's name (the table it provides, and in messages).
    pub name: String,
    /// Where to connect.
    pub conn: ConnSpec,
    /// The table read (or `query`).
    pub table: Option<TableName>,
    /// A `SELECT` read instead of a table.
    pub query: Option<String>,
}

impl SourceSpec {
    fn target(&self) -> String {
        match &self.table {
            Some(t) => format!("source {} ({t})", self.name),
            None => format!("source {} (query)", self.name),
        }
    }
}

/// One column of a PostgreSQL table as read.
#[derive(Debug, Clone)]
struct SourceColumn {
    name: String,
    kind: ReadAs,
    /// Filters on it may be pushed down (a comparable type, and a deterministic collation).
    filterable: bool,
}

impl SourceColumn {
    /// The column in the `SELECT` of a scan.
    fn select(&self) -> String {
        match self.kind {
            ReadAs::CastText | ReadAs::Bpchar => format!("{}::text", quote_ident(&self.name)),
            _ => quote_ident(&self.name),
        }
    }
}

/// A PostgreSQL table or query, read with binary COPY.
#[derive(Debug)]
pub struct PgTable {
    target: String,
    config: Arc<Config>,
    from: String,
    columns: Vec<SourceColumn>,
    schema: SchemaRef,
    scans: Mutex<Vec<String>>,
    identity: Option<String>,
}

impl PgTable {
    /// The `COPY` statements planned scans of this table run, oldest first (what was pushed
    /// down, for tests and debugging; also logged at debug level).
    pub fn scans(&self) -> Vec<String> {
        self.scans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// What identifies the table's data when it was opened: its oid, file node, size and change
    /// counters (a run's fingerprint of the models reading it). `None` for a query source.
    /// PostgreSQL publishes the counters up to about ten seconds after a commit, so a change made
    /// just before may not show.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Connects once to read the columns (names, types and type modifiers).
    pub async fn open(spec: &SourceSpec) -> Result<PgTable> {
        let target = spec.target();
        let fail = |message: String| Error::Postgres { target: target.clone(), message };
        let config = spec.conn.resolve().map_err(fail)?;
        let client = conn::connect(&config).await.map_err(fail)?;
        let db = |e: tokio_postgres::Error| fail(conn::describe(&e));
        let (from, relation) = match (&spec.table, &spec.query) {
            (Some(t), None) => {
                let exists =
                    client.query_one("SELECT to_regclass($1)::oid IS NOT NULL", &[&t.sql()]).await.map_err(db)?;
                if !exists.get::<_, bool>(0) {
                    return Err(fail(format!("table {t} does not exist")));
                }
                (t.sql(), t.sql())
            }
            (None, Some(q)) => {
                // A temporary view has the query's columns in the catalog, modifiers and all.
                client
                    .batch_execute(&format!("CREATE TEMP VIEW spillway_probe AS {q}"))
                    .await
                    .map_err(|e| fail(format!("the query does not run: {}", conn::describe(&e))))?;
                (format!("({q}) AS q"), "pg_temp.spillway_probe".to_string())
            }
            _ => return Err(fail("give either `table` or `query`".into())),
        };
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid::int8, a.atttypmod, a.attnotnull, \
                 COALESCE((SELECT c.collisdeterministic FROM pg_collation c WHERE c.oid = a.attcollation), true) \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&relation],
            )
            .await
            .map_err(db)?;
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            let kind = ReadAs::for_type(r.get::<_, i64>(1) as u32, r.get(2));
            let not_null: bool = r.get(3);
            let deterministic: bool = r.get(4);
            fields.push(Field::new(&name, kind.arrow(), !not_null || spec.query.is_some()));
            columns.push(SourceColumn { name, kind, filterable: deterministic && kind.compares_like_datafusion() });
        }
        let identity = match &spec.table {
            Some(t) => Some(
                client
                    .query_one(
                        "SELECT format('oid %s node %s size %s ins %s upd %s del %s', c.oid, c.relfilenode, \
                         pg_relation_size(c.oid), s.n_tup_ins, s.n_tup_upd, s.n_tup_del) \
                         FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid WHERE c.oid = to_regclass($1)",
                        &[&t.sql()],
                    )
                    .await
                    .map_err(db)?
                    .get::<_, String>(0),
            ),
            None => None,
        };
        Ok(PgTable {
            target,
            config: Arc::new(config),
            from,
            columns,
            schema: Arc::new(Schema::new(fields)),
            scans: Mutex::default(),
            identity,
        })
    }

    /// The `COPY` statement a scan runs.
    fn copy_sql(&self, projection: &[usize], filters: &[Expr], limit: Option<usize>) -> String {
        let cols: Vec<String> = projection.iter().map(|&i| self.columns[i].select()).collect();
        let conditions: Vec<String> = filters.iter().filter_map(|f| self.filter_sql(f)).collect();
        let mut sql = format!("SELECT {} FROM {}", cols.join(", "), self.from);
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        // A limit is safe to push only when every filter went with it.
        if let Some(n) = limit.filter(|_| conditions.len() == filters.len()) {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        format!("COPY ({sql}) TO STDOUT (FORMAT binary)")
    }

    /// `expr` as a PostgreSQL condition, when it is one of the simple forms this table pushes down.
    fn filter_sql(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op: op @ (Operator::And | Operator::Or), right }) => {
                let (l, r) = (self.filter_sql(left)?, self.filter_sql(right)?);
                Some(format!("({l} {} {r})", if *op == Operator::And { "AND" } else { "OR" }))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (col, lit, op) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) => (c, v, *op),
                    (Expr::Literal(v, _), Expr::Column(c)) => (c, v, op.swap()?),
                    _ => return None,
                };
                let sym = match op {
                    Operator::Eq => "=",
                    Operator::NotEq => "<>",
                    Operator::Lt => "<",
                    Operator::LtEq => "<=",
                    Operator::Gt => ">",
                    Operator::GtEq => ">=",
                    _ => return None,
                };
                let (column, kind) = self.column(&col.name)?;
                let value = literal_sql(lit, kind)?;
                let column = if is_text(kind) && !matches!(op, Operator::Eq | Operator::NotEq) {
                    format!("{column} COLLATE \"C\"")
                } else {
                    column
                };
                Some(format!("{column} {sym} {value}"))
            }
            Expr::IsNull(e) | Expr::IsNotNull(e) => {
                let Expr::Column(c) = e.as_ref() else { return None };
                // NULL is NULL whatever the type.
                let column = self.columns.iter().find(|col| col.name == c.name)?.select();
                Some(format!("{column} IS {}NULL", if matches!(expr, Expr::IsNotNull(_)) { "NOT " } else { "" }))
            }
            Expr::Between(Between { expr: e, negated, low, high }) => {
                let (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                    (e.as_ref(), low.as_ref(), high.as_ref())
                else {
                    return None;
                };
                let (column, kind) = self.column(&c.name)?;
                if is_text(kind) {
                    return None;
                }
                let not = if *negated { "NOT " } else { "" };
                Some(format!("{column} {not}BETWEEN {} AND {}", literal_sql(lo, kind)?, literal_sql(hi, kind)?))
            }
            Expr::InList(list) => {
                let Expr::Column(c) = list.expr.as_ref() else { return None };
                let (column, kind) = self.column(&c.name)?;
                let values: Option<Vec<String>> = list
                    .list
                    .iter()
                    .map(|e| match e {
                        Expr::Literal(v, _) => literal_sql(v, kind),
                        _ => None,
                    })
                    .collect();
                let not = if list.negated { "NOT " } else { "" };
                Some(format!("{column} {not}IN ({})", values?.join(", ")))
            }
            _ => None,
        }
    }

    /// A column filters may compare, as the scan reads it (`char(n)` as its `::text`).
    fn column(&self, name: &str) -> Option<(String, ReadAs)> {
        let c = self.columns.iter().find(|c| c.name == name)?;
        c.filterable.then(|| (c.select(), c.kind))
    }
}

fn is_text(kind: ReadAs) -> bool {
    matches!(kind, ReadAs::Text | ReadAs::Bpchar)
}

/// A literal compared with a column read as `kind`, written so PostgreSQL compares the same values.
fn literal_sql(v: &ScalarValue, kind: ReadAs) -> Option<String> {
    let numeric = matches!(
        kind,
        ReadAs::Int2
            | ReadAs::Int4
            | ReadAs::Int8
            | ReadAs::Float4
            | ReadAs::Float8
            | ReadAs::Decimal(..)
            | ReadAs::NumericFloat
    );
    match v {
        ScalarValue::Int8(Some(_))
        | ScalarValue::Int16(Some(_))
        | ScalarValue::Int32(Some(_))
        | ScalarValue::Int64(Some(_))
        | ScalarValue::UInt8(Some(_))
        | ScalarValue::UInt16(Some(_))
        | ScalarValue::UInt32(Some(_))
        | ScalarValue::UInt64(Some(_))
        | ScalarValue::Decimal128(Some(_), _, _)
            if numeric =>
        {
            Some(v.to_string())
        }
        ScalarValue::Float64(Some(f)) if numeric && f.is_finite() => Some(format!("{f:?}")),
        ScalarValue::Float32(Some(f)) if numeric && f.is_finite() => Some(format!("{f:?}")),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s))
            if is_text(kind) =>
        {
            Some(quote_literal(s))
        }
        ScalarValue::Boolean(Some(b)) if kind == ReadAs::Bool => Some(b.to_string()),
        ScalarValue::Date32(Some(_)) if kind == ReadAs::Date => Some(format!("DATE {}", quote_literal(&v.to_string()))),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for PgTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.filter_sql(f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.columns.len()).collect());
        let schema = Arc::new(self.schema.project(&projection)?);
        let partition = CopyPartition {
            target: self.target.clone(),
            config: self.config.clone(),
            sql: self.copy_sql(&projection, filters, limit),
            kinds: projection.iter().map(|&i| self.columns[i].kind).collect(),
            schema: schema.clone(),
        };
        tracing::debug!(source = %self.target, sql = %partition.sql, "scanning PostgreSQL");
        if let Ok(mut scans) = self.scans.lock() {
            scans.push(partition.sql.clone());
        }
        Ok(Arc::new(StreamingTableExec::try_new(schema, vec![Arc::new(partition)], None, vec![], false, limit)?))
    }
}

/// One COPY stream.
#[derive(Debug)]
struct CopyPartition {
    target: String,
    config: Arc<Config>,
    sql: String,
    kinds: Vec<ReadAs>,
    schema: SchemaRef,
}

impl PartitionStream for CopyPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 2);
        let tx = builder.tx();
        let (target, config, sql, kinds, schema) =
            (self.target.clone(), self.config.clone(), self.sql.clone(), self.kinds.clone(), self.schema.clone());
        let batch_size = ctx.session_config().batch_size().max(1);
        let reservation = MemoryConsumer::new(format!("PostgresScan[{target}]")).register(ctx.memory_pool());
        builder.spawn(async move {
            let fail = |message: String| {
                DataFusionError::External(Box::new(Error::Postgres { target: target.clone(), message }))
            };
            let client = conn::connect(&config).await.map_err(fail)?;
            let stream = client.copy_out(&sql).await.map_err(|e| fail(conn::describe(&e)))?;
            let mut stream = std::pin::pin!(stream);
            let mut decoder = CopyDecoder::new(schema, &kinds);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| fail(format!("reading failed: {}", conn::describe(&e))))?;
                let mut chunk = &chunk[..];
                loop {
                    decoder.push(chunk, batch_size).map_err(&fail)?;
                    chunk = &[];
                    reservation.try_resize(decoder.memory())?;
                    if decoder.rows() < batch_size {
                        break;
                    }
                    let batch = decoder.take()?;
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(()); // the query stopped reading (a LIMIT)
                    }
                }
            }
            if !decoder.finished() {
                return Err(fail("the COPY stream ended early (the connection was lost?)".into()));
            }
            if decoder.rows() > 0 {
                let _ = tx.send(Ok(decoder.take()?)).await;
            }
            reservation.free();
            Ok(())
        });
        builder.build()
    }
}
