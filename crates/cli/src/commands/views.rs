//! `spillway views apply|explain|status [DIR]`: a project's incremental views.

use crate::args::{ViewsApplyArgs, ViewsArgs, ViewsExplainArgs};
use crate::settings::Settings;
use anyhow::{Context, Result};
use spillway_engine::session;
use spillway_governor::{fmt_bytes, Governor, LeaseRequest, PoolOptions};
use spillway_pipeline::sources::Generator;
use spillway_pipeline::views::{Store, Views};
use spillway_pipeline::{Config, Project};
use spillway_tiers::TempSpace;

/// Opens the project's views under one lease of the whole leasable budget: their state is
/// charged to it.
async fn open(settings: &Settings, config: &Config, dir: &std::path::Path) -> Result<(Views, Governor)> {
    let project = Project::from_config(dir, config)?;
    let governor = Governor::new(settings.governor.clone())?;
    let temp = TempSpace::open(&settings.spill_dir, settings.max_spill)?;
    let options = session::SessionOptions::new(settings.cores.count, temp.temp_files().clone());
    let lease = governor.lease(LeaseRequest::bytes("views", governor.leasable()).heavy()).await?;
    let pool = lease.into_pool(PoolOptions {
        step: Some("views".into()),
        unspillable_reserve: settings.unspillable_reserve,
        pressure_aware: true,
    });
    let ctx = session::context(pool, &options)?;
    let generator = std::env::current_exe().map(Generator::Command).unwrap_or_default();
    let views = Views::open(&project, ctx, settings.cores.count, &generator).await?;
    Ok((views, governor))
}

pub async fn apply(settings: &Settings, config: &Config, args: ViewsApplyArgs) -> Result<()> {
    let (mut views, governor) = open(settings, config, &args.dir).await?;
    let report = views
        .apply(&|f| {
            println!(
                "applied {} ({}, {} rows) in {:.1}ms: {}",
                f.file,
                f.table,
                f.rows,
                f.us as f64 / 1000.0,
                if f.views_changed.is_empty() {
                    "no view changed".to_string()
                } else {
                    format!("changed {}", f.views_changed.join(", "))
                }
            )
        })
        .await?;
    println!(
        "{} change file(s) applied; started in {}ms ({} logged transaction(s) replayed); peak RSS {}",
        report.applied.len(),
        report.populate_ms,
        report.replayed,
        fmt_bytes(governor.timeline().peak_rss())
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub async fn explain(settings: &Settings, config: &Config, args: ViewsExplainArgs) -> Result<()> {
    let (views, _governor) = open(settings, config, &args.dir).await?;
    for line in views.explain(args.view.as_deref())? {
        println!("{line}");
    }
    Ok(())
}

pub fn status(config: &Config, args: ViewsArgs) -> Result<()> {
    let project = Project::from_config(&args.dir, config)?;
    let store = Store::open(&project.dir)?;
    let Some(status) = store.read_status()? else {
        println!("no views applied yet in {}: run `spillway views apply`", project.dir.display());
        return Ok(());
    };
    println!(
        "{} transaction(s) applied, the last {} (at {})",
        status.applied,
        status.last_file.as_deref().unwrap_or("-"),
        status.updated_at
    );
    let w = status.views.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    println!("{:<w$}  {:<11}  {:>10}  {:>10}  last change", "view", "refresh", "rows", "state");
    for v in &status.views {
        println!(
            "{:<w$}  {:<11}  {:>10}  {:>10}  {}",
            v.name,
            v.refresh,
            v.rows,
            fmt_bytes(v.state_bytes),
            v.last_change.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
