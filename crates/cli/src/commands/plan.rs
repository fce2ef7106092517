//! `spillway plan [DIR]`: validate a project (every model planned against its inputs' schemas)
//! and print what a run would do.

use crate::args::PlanArgs;
use crate::settings::Settings;
use anyhow::Result;
use spillway_governor::fmt_bytes;
use spillway_pipeline::resume::Decision;
use spillway_project::dag::Dag;
use spillway_project::{Config, Project, SinkTarget, SourceDef};

pub async fn run(settings: &Settings, config: &Config, args: PlanArgs) -> Result<()> {
    let project = Project::from_config(&args.dir, config)?;
    let (dag, selected) = spillway_pipeline::check::validate(&project, args.select.as_deref()).await?;
    let g = &settings.governor;
    println!(
        "project {} ({}): {} models; budget {}, leasable {}",
        project.dir.display(),
        project.config_path.as_ref().map_or("no spillway.toml".into(), |p| p.display().to_string()),
        project.models.len(),
        fmt_bytes(settings.budget.bytes),
        fmt_bytes(g.leasable())
    );
    for (name, def) in &project.sources {
        let what = match def {
            SourceDef::Tpch { sf, .. } => format!("TPC-H sf{sf}, generated: {}", def.tables(name).join(", ")),
            SourceDef::Parquet { path, .. }
            | SourceDef::Csv { path, .. }
            | SourceDef::Json { path, .. }
            | SourceDef::Arrow { path, .. } => {
                format!("{} {}", def_kind(def), path.display())
            }
            SourceDef::Postgres { .. } => match def.postgres(name) {
                Some(Ok(spec)) => format!(
                    "postgres {} via {}",
                    spec.table.as_ref().map_or("(query)".to_string(), |t| t.to_string()),
                    spec.conn.shown()
                ),
                _ => "postgres (invalid)".into(),
            },
        };
        println!("source {name}: {what}");
    }
    // Followed tables: wal_level, a key or replica identity, column types; before any work.
    spillway_live::cdc::check(&project).await?;
    for (name, sink) in &project.sinks {
        let to = match sink.target(name, &project.dir) {
            Ok(SinkTarget::File(path)) => path.display().to_string(),
            Ok(SinkTarget::Postgres { spec, optional }) => format!(
                "postgres {} ({}{}) via {}",
                spec.table,
                spec.mode,
                if optional { ", optional" } else { "" },
                spec.conn.shown()
            ),
            Err(e) => e,
        };
        println!("sink {name}: {} -> {to}", sink.model);
    }
    println!();
    let w = selected.iter().map(|m| m.len()).max().unwrap_or(0).max(24);
    println!(
        "{:>3}  {:<w$} {:<6} {:<18} {:<12} {:<10} {:<10} {:<8} reads",
        "#", "model", "class", "lease", "materialize", "checkpoint", "isolated", "engine"
    );
    let confinement = spillway_isolate::Confinement::detect().name();
    for (i, name) in selected.iter().enumerate() {
        let m = &project.models[name];
        let s = &m.settings;
        let bytes = s.lease.bytes(g);
        let too_big = if bytes > g.leasable() { " (> leasable!)" } else { "" };
        let reads: Vec<String> =
            dag.upstream[name].iter().cloned().chain(dag.sources[name].iter().map(|t| format!("{t}*"))).collect();
        println!(
            "{:>3}  {:<w$} {:<6} {:<18} {:<12} {:<10} {:<10} {:<8} {}",
            i + 1,
            name,
            s.class.to_string(),
            format!("{} {}{too_big}", s.lease, fmt_bytes(bytes)),
            format!("{:?}", s.materialize).to_lowercase(),
            if s.check {
                "check"
            } else if s.checkpoint {
                "yes"
            } else {
                "no"
            },
            if spillway_pipeline::isolates(m) { confinement.as_str() } else { "no" },
            s.engine.to_string(),
            if reads.is_empty() { "-".into() } else { reads.join(", ") }
        );
    }
    println!("(* = source table)");
    if let Some(url) = &project.cluster {
        cluster_plan(&project, &dag, &selected, url);
    }
    if args.resume {
        let (previous, decisions) = spillway_pipeline::resume::preview(&project, args.select.as_deref()).await?;
        println!();
        match previous {
            Some(run) => println!("--resume from run {run}:"),
            None => println!("--resume: no earlier run with a manifest; everything runs"),
        }
        for (name, decision) in decisions {
            match decision {
                Decision::Reuse { record, input } => {
                    let from = input.map_or_else(
                        || "not read by anything that runs".to_string(),
                        |p| format!("read from {}", p.display()),
                    );
                    println!("  reuse  {name:<w$} (run {}; {from})", record.reused_from.unwrap_or_default());
                }
                Decision::Rerun(why) => println!("  run    {name:<w$} {why}"),
            }
        }
    }
    Ok(())
}

fn def_kind(def: &SourceDef) -> &'static str {
    match def {
        SourceDef::Parquet { .. } => "parquet",
        SourceDef::Csv { .. } => "csv",
        SourceDef::Json { .. } => "json",
        SourceDef::Arrow { .. } => "arrow",
        SourceDef::Tpch { .. } => "tpch",
        SourceDef::Postgres { .. } => "postgres",
    }
}

/// What crosses to the Ballista cluster and how: which models run there, their inputs (files the
/// executors read; memory the cluster cannot reach goes as Parquet) and where their sinks are
/// written.
fn cluster_plan(project: &Project, dag: &Dag, selected: &[String], url: &spillway_project::ClusterUrl) {
    let there: Vec<&String> = selected.iter().filter(|m| spillway_pipeline::on_cluster(&project.models[*m])).collect();
    println!();
    if there.is_empty() {
        println!("cluster {url}: no selected model runs there");
        return;
    }
    let names: Vec<&str> = there.iter().map(|m| m.as_str()).collect();
    println!("cluster {url} (Ballista): {} run there; their rows come back here", names.join(", "));
    let sources = project.source_tables();
    for m in &there {
        for table in &dag.sources[*m] {
            let how = match sources.get(table).and_then(|s| project.sources.get(s)) {
                Some(SourceDef::Postgres { .. }) => {
                    "PostgreSQL, read here and staged through Parquet for the executors"
                }
                _ => "read by the executors from its files",
            };
            println!("  {m} reads source table {table}: {how}");
        }
        for up in &dag.upstream[*m] {
            let how = if selected.contains(up) {
                "handed off as Parquet (the memory tier does not cross)"
            } else {
                "read by the executors from its published file"
            };
            println!("  {m} reads {up}: {how}");
        }
        for sink in project.sinks.iter().filter(|(_, d)| &d.model == *m).map(|(name, _)| name) {
            println!("  {m} sink {sink}: written here from the rows that come back");
        }
    }
}
