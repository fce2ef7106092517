//! Validation before any work starts: every model is planned (not run) against the schemas of
//! its inputs, so unknown columns, type errors and bad functions are reported with file and line,
//! all of them at once, by `spillway plan` and before `spillway run` does anything.
//!
//! Source tables are registered for real when their data exists (reading only file footers or a
//! CSV sample) and as empty tables of the generated schema for a `tpch` source not generated
//! yet. Each model's output schema then stands in, as an empty table, for the model downstream.

use crate::error::{Error, Result};
use datafusion::catalog::TableProvider;
use datafusion::common::SchemaError;
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use spillway_engine::{tables, tpch};
use spillway_postgres::PgTable;
use spillway_project::dag::{sql_error_line, Dag};
use spillway_project::sources;
use spillway_project::{line_of, Project, SourceDef};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Builds the DAG, selects models (`select`, dbt-style; `None` for all) and plans every model
/// that they need, in run order. Returns the DAG and the selected models in run order, or every
/// problem found, each with file and line: SQL that does not parse, unknown tables and columns,
/// type errors, missing source files.
pub async fn validate(project: &Project, select: Option<&str>) -> Result<(Dag, Vec<String>)> {
    validate_and_open(project, select).await.map(|v| (v.dag, v.selected))
}

/// What [`validate_and_open`] found: the DAG, the selected models in run order, and the
/// `postgres` sources it opened (their columns read), for the run to use as they are.
pub struct Validated {
    /// The dependency graph.
    pub dag: Dag,
    /// Selected models, in run order.
    pub selected: Vec<String>,
    /// PostgreSQL source tables by table name.
    pub postgres: BTreeMap<String, Arc<PgTable>>,
}

/// [`validate`], keeping the PostgreSQL sources it opened.
pub async fn validate_and_open(project: &Project, select: Option<&str>) -> Result<Validated> {
    let (dag, broken) = Dag::analyze(project)?;
    let models = match select {
        Some(sel) => dag.select(sel).map_err(Error::Usage)?,
        None => dag.order.clone(),
    };
    let mut problems: Vec<Error> = sources::missing_files(project).into_iter().map(Error::from).collect();
    if !problems.is_empty() {
        return Err(Error::many(problems).expect("non-empty"));
    }
    let models = &models;
    let ctx = SessionContext::new();
    let by_table = project.source_tables();
    let needed: BTreeSet<&String> = models.iter().flat_map(|m| dag.sources[m].iter()).collect();
    // PostgreSQL sources: connecting and reading their columns here reports an unreachable
    // server, a bad password or a missing table before any work starts.
    let pg_tables: Vec<String> = needed.iter().map(|t| (*t).clone()).collect();
    let pg = sources::open_postgres(project, &pg_tables).await?;
    for table in needed {
        let def = &project.sources[&by_table[table]];
        let registered = match def {
            SourceDef::Tpch { sf, .. } => {
                let dir = sources::tpch_dir(project, *sf);
                if sources::is_generated(&dir) {
                    tables::register(&ctx, table, &dir.join(table).to_string_lossy()).await.map_err(Error::from)
                } else {
                    let schema = tpch::schema(table).expect("a tpch source provides TPC-H tables only");
                    let empty: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(schema));
                    ctx.register_table(table.as_str(), empty)
                        .map(|_| ())
                        .map_err(|e| Error::from(spillway_engine::Error::from(e)))
                }
            }
            SourceDef::Parquet { path, .. }
            | SourceDef::Csv { path, .. }
            | SourceDef::Json { path, .. }
            | SourceDef::Arrow { path, .. } => {
                tables::register(&ctx, table, &project.dir.join(path).to_string_lossy()).await.map_err(Error::from)
            }
            SourceDef::Postgres { .. } => {
                let provider: Arc<dyn TableProvider> = pg[table].clone();
                ctx.register_table(table.as_str(), provider)
                    .map(|_| ())
                    .map_err(|e| Error::from(spillway_engine::Error::from(e)))
            }
        };
        if let Err(e) = registered {
            let (cfg, line) = sources::source_line(project, &by_table[table]);
            problems.push(Error::at(cfg, line, format!("[sources.{}]: {e}", by_table[table])));
        }
    }
    if !problems.is_empty() {
        return Err(Error::many(problems).expect("non-empty"));
    }
    // Models whose upstream failed are not planned (their error would only repeat it).
    let mut failed: BTreeMap<&str, ()> = BTreeMap::new();
    for (name, e) in broken {
        failed.insert(project.models.get_key_value(&name).map(|(k, _)| k.as_str()).unwrap_or_default(), ());
        problems.push(e.into());
    }
    let selected: BTreeSet<&String> = models.iter().collect();
    for name in &dag.order {
        let model = &project.models[name];
        if failed.contains_key(name.as_str()) {
            continue;
        }
        if dag.upstream[name].iter().any(|u| failed.contains_key(u.as_str())) {
            failed.insert(name, ());
            continue;
        }
        let planned = ctx.state().create_logical_plan(&model.sql).await;
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                failed.insert(name, ());
                if selected.contains(name) || dag.downstream[name].iter().any(|d| selected.contains(d)) {
                    problems.push(Error::at(&model.path, error_line(&model.sql, &e), one_line(&e)));
                }
                continue;
            }
        };
        let schema = plan.schema().as_arrow().clone();
        let mut seen = BTreeSet::new();
        let dups: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).filter(|n| !seen.insert(*n)).collect();
        if !dups.is_empty() {
            failed.insert(name, ());
            problems.push(Error::at(
                &model.path,
                1,
                format!(
                    "the result has more than one column named {}: give each column its own alias",
                    dups.join(", ")
                ),
            ));
            continue;
        }
        let empty: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(Arc::new(schema)));
        if let Err(e) = ctx.register_table(name.as_str(), empty) {
            problems.push(Error::at(&model.path, 1, one_line(&e)));
        }
    }
    match Error::many(problems) {
        Some(e) => Err(e),
        None => Ok(Validated { dag, selected: models.clone(), postgres: pg }),
    }
}

/// The line an error points at: a column it names, or the parser's position.
fn error_line(sql: &str, e: &DataFusionError) -> usize {
    if let DataFusionError::SchemaError(err, _) = e.find_root() {
        if let SchemaError::FieldNotFound { field, .. } = err.as_ref() {
            return line_of(sql, &field.name);
        }
    }
    sql_error_line(&e.to_string())
}

/// DataFusion's message without its backtrace placeholder and on one line.
fn one_line(e: &DataFusionError) -> String {
    e.find_root().to_string().replace('\n', " ")
}
