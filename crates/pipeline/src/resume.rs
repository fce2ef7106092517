//! Resuming: which models of a run may reuse what an earlier run (its manifest) finished, and why
//! the others run again.
//!
//! ```text
//!   for each selected model, upstream first:
//!     last run has it ok ─ same fingerprint ─ every sink it publishes still as published ─▶ reuse
//!     otherwise ─▶ rerun (why: not in the last run / failed there / its SQL, settings,
//!                  an upstream model or its sources changed / a sink was changed or removed)
//!   then, downstream first: a reused model read by a model that reruns must have its output
//!     on disk (its checkpoint under .spillway/state/, or a Parquet/Arrow file sink it published);
//!     memory and IPC hand-offs died with their run ─▶ rerun
//! ```
//!
//! A reused model is not run: its downstream models read its kept file, and its record is copied
//! into the new run's manifest (with `reused_from`), so a resume of a resume works.

use crate::manifest::{Fingerprint, Manifest, ModelRecord};
use crate::results::Status;
use spillway_project::dag::Dag;
use spillway_project::{Project, SinkTarget};
use spillway_tiers::FileFormat;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// What resuming does with one model.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Reuse what `record` describes; downstream models read `input` (when they run).
    Reuse {
        /// The earlier run's record (with `reused_from` set to the run that computed it).
        record: Box<ModelRecord>,
        /// The file downstream models read, if it was kept.
        input: Option<PathBuf>,
    },
    /// Run it; the reason, for `plan --resume`.
    Rerun(String),
}

/// Decides every model of `selected` (run order) against `previous`.
pub fn decide(
    project: &Project,
    dag: &Dag,
    selected: &[String],
    fingerprints: &BTreeMap<String, Fingerprint>,
    previous: Option<&Manifest>,
) -> BTreeMap<String, Decision> {
    let mut out = BTreeMap::new();
    for name in selected {
        out.insert(name.clone(), first_pass(project, name, &fingerprints[name], previous));
    }
    // Downstream first: a model that reruns needs its upstream models' outputs.
    let chosen: BTreeSet<&String> = selected.iter().collect();
    for name in selected.iter().rev() {
        let Some(Decision::Reuse { input: None, .. }) = out.get(name) else { continue };
        let rerun_reader = dag.downstream[name]
            .iter()
            .filter(|d| chosen.contains(d))
            .find(|d| matches!(out.get(*d), Some(Decision::Rerun(_))));
        if let Some(reader) = rerun_reader {
            let why = format!(
                "{reader} runs again and reads it, and its output was not kept (set checkpoint = true to keep it)"
            );
            out.insert(name.clone(), Decision::Rerun(why));
        }
    }
    out
}

fn first_pass(project: &Project, name: &str, now: &Fingerprint, previous: Option<&Manifest>) -> Decision {
    let Some(prev) = previous else { return Decision::Rerun("no earlier run to resume".into()) };
    let Some(record) = prev.models.get(name) else {
        return Decision::Rerun(format!("did not finish in run {}", prev.run_id));
    };
    if record.status != Status::Ok {
        return Decision::Rerun(format!("did not complete in run {}", prev.run_id));
    }
    if now.sources.is_none() {
        return Decision::Rerun("reads a PostgreSQL query, which cannot be fingerprinted".into());
    }
    let changed = now.changes(&record.fingerprint);
    if !changed.is_empty() {
        return Decision::Rerun(format!("changed since run {}: {}", prev.run_id, changed.join(", ")));
    }
    // Every sink it publishes now must still be as it was published.
    for (sink, def) in project.sinks.iter().filter(|(_, d)| d.model == name) {
        let Ok(target) = def.target(sink, &project.dir) else {
            return Decision::Rerun(format!("sink {sink} is invalid"));
        };
        let published = record.sinks.iter().find(|s| &s.name == sink);
        let ok = match (&target, published) {
            (SinkTarget::File(path), Some(s)) => s.file.as_ref().is_some_and(|f| &f.path == path && f.intact()),
            (SinkTarget::Postgres { spec, optional }, Some(s)) => {
                // The same server, database and table (`user@host:port/db schema.table`).
                let now =
                    spec.conn.resolve().map(|c| format!("{} {}", spillway_postgres::conn::redacted(&c), spec.table));
                s.postgres.as_ref().is_some_and(|t| now.as_ref().is_ok_and(|n| n == t))
                    || (*optional && spec.conn.env_unset())
            }
            (SinkTarget::Postgres { spec, optional: true }, None) => spec.conn.env_unset(),
            _ => false,
        };
        if !ok {
            return Decision::Rerun(format!("sink {sink} was not published as it is now, or was changed since"));
        }
    }
    let kept = record.kept.as_ref().filter(|k| k.intact()).map(|k| k.path.clone());
    let from_sink = || {
        record.sinks.iter().filter_map(|s| s.file.as_ref()).find(|f| {
            matches!(FileFormat::from_path(&f.path), Some(FileFormat::Parquet | FileFormat::Arrow)) && f.intact()
        })
    };
    let input = kept.or_else(|| from_sink().map(|f| f.path.clone()));
    let mut record = record.clone();
    record.reused_from.get_or_insert_with(|| prev.run_id.clone());
    Decision::Reuse { record: Box::new(record), input }
}

/// What `spillway run --resume` would do now, for `spillway plan --resume`: the last run's id
/// (if any) and each selected model's decision, in run order.
pub async fn preview(
    project: &Project,
    select: Option<&str>,
) -> crate::Result<(Option<String>, Vec<(String, Decision)>)> {
    let v = crate::check::validate_and_open(project, select).await?;
    let fingerprints = crate::manifest::fingerprints_now(project, &v.dag, &v.postgres);
    let previous = Manifest::latest(&project.dir);
    let mut decisions = decide(project, &v.dag, &v.selected, &fingerprints, previous.as_ref());
    let ordered = v.selected.iter().filter_map(|m| decisions.remove(m).map(|d| (m.clone(), d))).collect();
    Ok((previous.map(|p| p.run_id), ordered))
}
