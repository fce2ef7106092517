//! Dependencies between models, inferred from the tables each model's SQL references (parsed
//! with DataFusion's SQL parser, CTE names excluded), and the order to run them in.

use crate::error::{Error, Result};
use crate::project::{line_of, Project};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::ast::Statement;
use std::collections::{BTreeMap, BTreeSet};

/// The model graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Dag {
    /// For each model, the models it reads (sorted).
    pub upstream: BTreeMap<String, Vec<String>>,
    /// For each model, the source tables it reads (sorted).
    pub sources: BTreeMap<String, Vec<String>>,
    /// For each model, the models that read it (sorted).
    pub downstream: BTreeMap<String, Vec<String>>,
    /// A run order: every model after all its upstream models; ties by name.
    pub order: Vec<String>,
}

impl Dag {
    /// Builds the graph of `project`, failing on SQL that is not one `SELECT`, on unknown tables
    /// (with file and line; every such problem at once) and on cycles.
    pub fn build(project: &Project) -> Result<Dag> {
        let (dag, broken) = Self::analyze(project)?;
        match Error::many(broken.into_values().collect()) {
            Some(e) => Err(e),
            None => Ok(dag),
        }
    }

    /// Like [`Dag::build`], but a model whose SQL cannot be parsed or reads an unknown table is
    /// kept in the graph without upstream edges and returned with its problem, so that
    /// validation can go on and report the problems of the other models too. Cycles still fail.
    pub fn analyze(project: &Project) -> Result<(Dag, BTreeMap<String, Error>)> {
        let source_tables = project.source_tables();
        // DataFusion's table functions (`range`, `generate_series`, ...) read no table.
        let table_functions: BTreeSet<String> =
            datafusion::prelude::SessionContext::new().state().table_functions().keys().cloned().collect();
        let mut upstream = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for model in project.models.values() {
            match references(project, model, &source_tables, &table_functions) {
                Ok((ups, srcs)) => {
                    upstream.insert(model.name.clone(), ups);
                    sources.insert(model.name.clone(), srcs);
                }
                Err(e) => {
                    upstream.insert(model.name.clone(), vec![]);
                    sources.insert(model.name.clone(), vec![]);
                    broken.insert(model.name.clone(), e);
                }
            }
        }
        let mut downstream: BTreeMap<String, Vec<String>> =
            project.models.keys().map(|k| (k.clone(), vec![])).collect();
        for (m, ups) in &upstream {
            for u in ups {
                downstream.entry(u.clone()).or_default().push(m.clone());
            }
        }
        let order = topological(&upstream)?;
        Ok((Dag { upstream, sources, downstream, order }, broken))
    }

    /// The models `selector` picks, in run order: `model`, `+model` (with its ancestors),
    /// `model+` (with its descendants), several separated by spaces or commas.
    pub fn select(&self, selector: &str) -> std::result::Result<Vec<String>, String> {
        let mut picked = BTreeSet::new();
        for part in selector.split([' ', ',']).filter(|p| !p.is_empty()) {
            let ancestors = part.starts_with('+');
            let descendants = part.ends_with('+');
            let name = part.trim_matches('+');
            if !self.upstream.contains_key(name) {
                return Err(format!("--select: no model named {name:?}"));
            }
            picked.insert(name.to_string());
            if ancestors {
                walk(&self.upstream, name, &mut picked);
            }
            if descendants {
                walk(&self.downstream, name, &mut picked);
            }
        }
        Ok(self.order.iter().filter(|m| picked.contains(*m)).cloned().collect())
    }
}

/// The tables `sql` (the text of `path`, a `what`: "model" or "view") reads: it must be one
/// `SELECT` (or `WITH ... SELECT`); errors name the file and line.
pub fn tables_read(path: &std::path::Path, sql: &str, what: &str) -> Result<Vec<datafusion::common::TableReference>> {
    let statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::at(path, sql_error_line(&e.to_string()), e.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::at(path, 1, format!("a {what} is one SELECT statement; found {}", statements.len())));
    }
    let statement = &statements[0];
    if !matches!(statement, DFStatement::Statement(s) if matches!(**s, Statement::Query(_))) {
        return Err(Error::at(path, 1, format!("a {what} must be a SELECT (or WITH ... SELECT) query")));
    }
    let (tables, _ctes) = resolve_table_references(statement, true).map_err(|e| Error::at(path, 1, e.to_string()))?;
    Ok(tables)
}

/// The models and source tables `model` reads.
fn references(
    project: &Project,
    model: &crate::project::Model,
    source_tables: &BTreeMap<String, String>,
    table_functions: &BTreeSet<String>,
) -> Result<(Vec<String>, Vec<String>)> {
    let tables = tables_read(&model.path, &model.sql, "model")?;
    let (mut ups, mut srcs) = (BTreeSet::new(), BTreeSet::new());
    for t in tables {
        let name = t.table().to_string();
        if name == model.name {
            return Err(Error::Cycle(format!("{0} reads itself ({1})", model.name, model.path.display())));
        } else if project.models.contains_key(&name) {
            ups.insert(name);
        } else if source_tables.contains_key(&name) {
            srcs.insert(name);
        } else if !table_functions.contains(&name) {
            let known: Vec<&str> = project.models.keys().chain(source_tables.keys()).map(|s| s.as_str()).collect();
            return Err(Error::at(
                &model.path,
                line_of(&model.sql, &name),
                format!("unknown table `{name}`: not a model or a source table (known: {})", known.join(", ")),
            ));
        }
    }
    Ok((ups.into_iter().collect(), srcs.into_iter().collect()))
}

fn walk(edges: &BTreeMap<String, Vec<String>>, from: &str, into: &mut BTreeSet<String>) {
    for next in edges.get(from).into_iter().flatten() {
        if into.insert(next.clone()) {
            walk(edges, next, into);
        }
    }
}

/// Kahn's algorithm with a sorted ready set (a stable order); a leftover means a cycle.
pub fn topological(upstream: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    let mut remaining: BTreeMap<&str, usize> = upstream.iter().map(|(m, u)| (m.as_str(), u.len())).collect();
    let mut ready: BTreeSet<&str> = remaining.iter().filter(|(_, n)| **n == 0).map(|(m, _)| *m).collect();
    let mut order = Vec::new();
    while let Some(m) = ready.pop_first() {
        remaining.remove(m);
        order.push(m.to_string());
        for (other, ups) in upstream {
            if ups.iter().any(|u| u == m) {
                if let Some(n) = remaining.get_mut(other.as_str()) {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert(other.as_str());
                    }
                }
            }
        }
    }
    if remaining.is_empty() {
        return Ok(order);
    }
    // Describe one cycle: follow upstream edges inside the remainder until a model repeats.
    let stuck: BTreeSet<&str> = remaining.keys().copied().collect();
    let mut path = vec![*stuck.iter().next().expect("non-empty")];
    loop {
        let last = *path.last().expect("non-empty");
        let next = upstream[last]
            .iter()
            .map(|s| s.as_str())
            .find(|u| stuck.contains(u))
            .expect("a stuck model has a stuck upstream");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<&str> = path[pos..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(Error::Cycle(cycle.join(" -> ")));
        }
        path.push(next);
    }
}

/// The line number in a sqlparser error message (`... at Line: 3, Column: 7`), else 1.
pub fn sql_error_line(msg: &str) -> usize {
    msg.split("Line: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}
