//! `spillway sql --project DIR`: a project's tables in the shell, by name, as `dbt show` gives
//! them: every source table; the output of each model the last run kept (its checkpoint,
//! `checkpoint = true`, or else the file its sink published, while the file is still the one
//! that run wrote); and each
//! view's current contents (populated from the sources and the change log, as `views apply`
//! rebuilds them; a snapshot taken when the shell starts).

use crate::error::Result;
use crate::shell::Shell;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use spillway_engine::tables;
use spillway_live::{Access, Views};
use spillway_pipeline::manifest::Manifest;
use spillway_project::sources::{self, Generator};
use spillway_project::Project;
use std::sync::Arc;

/// What [`open`] registered, by kind, and what it left out and why.
#[derive(Debug, Default)]
pub struct Opened {
    /// Source tables.
    pub sources: Vec<String>,
    /// Models whose kept output was registered.
    pub models: Vec<String>,
    /// Views.
    pub views: Vec<String>,
    /// What was left out, with why.
    pub skipped: Vec<String>,
}

impl Opened {
    /// One line for the shell's banner.
    pub fn summary(&self) -> String {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        format!("sources: {} · models: {} · views: {}", list(&self.sources), list(&self.models), list(&self.views))
    }
}

/// Registers `project`'s tables in `shell`. The views are populated on `views_ctx` (a context
/// on the shell's lease: their state is charged to it, and their settings stay out of the
/// shell's session).
pub async fn open(
    shell: &mut Shell,
    project: &Project,
    views_ctx: SessionContext,
    threads: usize,
    generator: &Generator,
) -> Result<Opened> {
    let mut opened = Opened::default();
    let ctx = shell.context().clone();
    if !project.views.is_empty() {
        let follows_cdc = project.sources.values().any(|s| s.cdc(&project.dir).is_some());
        if follows_cdc {
            opened.skipped.push(
                "views: they follow a PostgreSQL slot, which only `views serve` or `views apply` may read".into(),
            );
        } else {
            let views = Views::open(project, views_ctx, threads, generator, Access::Read, &|_, _| {}).await?;
            for name in views.names() {
                // A snapshot, reserved from the views' pool for the shell's life.
                let contents = views.contents(name)?;
                let table = MemTable::try_new(contents.batch.schema(), vec![vec![contents.batch.clone()]])?;
                ctx.register_table(name.as_str(), Arc::new(table))?;
                shell.keep(Box::new(contents));
                opened.views.push(name.clone());
            }
            shell.keep(Box::new(views));
        }
    }
    let all: Vec<String> = project.source_tables().into_keys().collect();
    let (p, needed, g) = (project.clone(), all.clone(), generator.clone());
    let mut located = tokio::task::spawn_blocking(move || sources::prepare(&p, &needed, threads, &g, &|_, _, _| {}))
        .await
        .map_err(|e| crate::Error::Command(format!("preparing the sources failed: {e}")))??;
    match sources::open_postgres(project, &all).await {
        Ok(pg) => located.postgres = pg,
        Err(e) => opened.skipped.push(format!("PostgreSQL sources: {e}")),
    }
    for table in &all {
        if located.locations.contains_key(table) || located.postgres.contains_key(table) {
            located.register(&ctx, table).await?;
            opened.sources.push(table.clone());
        }
    }
    if let Some(manifest) = Manifest::latest(&project.dir) {
        for (model, record) in &manifest.models {
            // Its checkpoint, or else the first file a sink published.
            let Some(stamp) = record.kept.as_ref().or_else(|| record.sinks.iter().find_map(|s| s.file.as_ref())) else {
                continue;
            };
            if opened.views.contains(model) || opened.sources.contains(model) {
                opened.skipped.push(format!("model {model}: its name is taken by a source or view"));
            } else if !stamp.intact() {
                opened.skipped.push(format!(
                    "model {model}: {} changed since run {}",
                    stamp.path.display(),
                    manifest.run_id
                ));
            } else {
                tables::register(&ctx, model, &stamp.path.to_string_lossy()).await?;
                opened.models.push(model.clone());
            }
        }
    }
    Ok(opened)
}
