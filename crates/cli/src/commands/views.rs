//! `spillway views apply|explain|status|serve [DIR]`: a project's incremental views.

use crate::args::{ViewsApplyArgs, ViewsArgs, ViewsExplainArgs, ViewsServeArgs};
use crate::http;
use crate::settings::Settings;
use anyhow::{Context, Result};
use spillway_engine::session;
use spillway_governor::{fmt_bytes, Governor, LeaseRequest, PoolOptions};
use spillway_live::serve::{self as serving, Memory, ServeOptions, Shared};
use spillway_live::{Access, Serving, Store, Views};
use spillway_project::sources::Generator;
use spillway_project::{clock, Config, Project};
use spillway_tiers::TempSpace;
use std::io::Write;
use std::sync::Arc;

/// Opens the project's views under one elastic lease that can grow to the whole leasable
/// budget: their state is charged to it. `write`: as their one writer (the store's lock is taken first), else to read.
/// The temp space (this process's run folder, where spooled changes go) lives as long as the
/// caller keeps it: dropped, the run folder and its marker are removed.
async fn open(
    settings: &Settings,
    config: &Config,
    dir: &std::path::Path,
    write: bool,
) -> Result<(Views, Governor, TempSpace)> {
    let access = match write {
        true => Access::Write(Store::open(&Project::from_config(dir, config)?.dir)?.lock()?),
        false => Access::Read,
    };
    let governor = Governor::new(settings.governor.clone())?;
    let temp = TempSpace::open(&settings.spill_dir, settings.max_spill)?;
    let views = open_on(settings, config, dir, &governor, &temp, access, &|_, _| {}).await?;
    Ok((views, governor, temp))
}

async fn open_on(
    settings: &Settings,
    config: &Config,
    dir: &std::path::Path,
    governor: &Governor,
    temp: &TempSpace,
    access: Access,
    populated: &(dyn Fn(usize, usize) + Sync),
) -> Result<Views> {
    let project = Project::from_config(dir, config)?;
    let options = session::SessionOptions::new(settings.cores.count, temp.temp_files().clone());
    // An elastic lease: it starts at one step and follows what the views' state and work
    // reserve, up to the whole budget, so a long-lived process holds from the machine only what
    // it uses (other spillway processes get their leases beside it).
    let start = (spillway_governor::GROW_STEP as u64).min(governor.leasable());
    let lease = governor.lease(LeaseRequest::bytes("views", start).heavy()).await?;
    let pool = lease.into_pool(PoolOptions {
        step: Some("views".into()),
        unspillable_reserve: settings.unspillable_reserve,
        pressure_aware: true,
        grow_to: Some(governor.leasable()),
    });
    let ctx = session::context(pool, &options)?;
    let generator = std::env::current_exe().map(Generator::Command).unwrap_or_default();
    Ok(Views::open(&project, ctx, settings.cores.count, &generator, access, populated).await?)
}

/// `views serve`: the HTTP endpoint first (so that `/status` answers during hydration), then
/// the views, then the loop until SIGINT or SIGTERM.
pub async fn serve(settings: &Settings, config: &Config, args: ViewsServeArgs) -> Result<()> {
    let project = Project::from_config(&args.dir, config)?;
    let store = Store::open(&project.dir)?;
    // Before anything is written (serve.json among it): one writer at a time.
    // Held to the end, past serve.json's removal; the views hold a clone.
    let lock = store.lock()?;
    let governor = Governor::new(settings.governor.clone())?;
    let temp = Arc::new(TempSpace::open(&settings.spill_dir, settings.max_spill)?);
    let shared = Shared::new(clock::now_rfc3339());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (choose another with --listen)", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    let memory = {
        let (governor, temp, shared) = (governor.clone(), temp.clone(), shared.clone());
        move || {
            let s = governor.timeline().last().unwrap_or_default();
            Memory {
                budget: governor.budget(),
                leased: governor.leased(),
                state: shared.snapshot().views.iter().map(|v| v.state_bytes).sum(),
                resident: s.resident,
                rss: s.rss,
                rss_anon: s.rss_anon,
                peak_rss: governor.timeline().peak_rss(),
                pressure: governor.pressure(),
                spilled: temp.quota().used(),
                spilled_peak: temp.quota().peak(),
            }
        }
    };
    let memory: http::MemoryProbe = Arc::new(memory);
    let report: http::ReportProbe = {
        let (governor, shared, memory) = (governor.clone(), shared.clone(), memory.clone());
        Arc::new(move || {
            spillway_live::report::render(
                &shared.snapshot(),
                &memory(),
                &shared.marks(),
                &governor.timeline().samples(),
            )
        })
    };
    let server = tokio::spawn(http::serve(listener, shared.clone(), memory, report.clone()));
    store.write_serving(&Serving {
        pid: std::process::id(),
        url: url.clone(),
        started_at: shared.snapshot().started_at,
    })?;
    say(format_args!("serving {url}/status and {url}/metrics; hydrating {} view(s)", project.views.len()));
    let signals = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            shared.stop();
            let _ = writeln!(std::io::stderr(), "stopping after the transaction in flight");
        })
    };
    let populated = |done: usize, total: usize| {
        shared.update(|s| {
            s.views_populated = done;
            s.views_total = total;
        })
    };
    let result: Result<bool> = async {
        // A stop during hydration drops it: nothing is committed before the loop starts.
        let mut views = tokio::select! {
            v = open_on(settings, config, &args.dir, &governor, &temp, Access::Write(lock.clone()), &populated) => v?,
            _ = shared.stopped() => return Ok(false),
        };
        spillway_governor::jemalloc::purge_all_arenas();
        say(format_args!("live: {} view(s) populated in {}ms", views.names().len(), views.status().populate_ms));
        let options = ServeOptions { poll: args.poll, governor: governor.clone() };
        serving::serve(&mut views, &shared, &options).await?;
        Ok(true)
    }
    .await;
    shared.stop(); // ends the HTTP endpoint's graceful shutdown
    let _ = server.await;
    signals.abort();
    store.clear_serving()?;
    let page = store.dir().join("report.html");
    std::fs::write(&page, report()).with_context(|| format!("writing {}", page.display()))?;
    let hydrated = result?;
    let s = shared.snapshot();
    say(format_args!(
        "stopped{}: {} {} ({} rows) applied by this process, {} transaction(s) in the log; peak RSS {}; report: {}",
        if hydrated { "" } else { " while hydrating" },
        s.applied_now,
        if s.slot_lsn.is_some() { "transaction(s) from PostgreSQL or change file(s)" } else { "change file(s)" },
        s.change_rows,
        s.transactions,
        fmt_bytes(governor.timeline().peak_rss()),
        page.display()
    ));
    Ok(())
}

/// A line on stdout for a long-lived process: one whose stdout was closed (a supervisor gone, a
/// pipe nobody reads) keeps running instead of panicking on `println!`.
fn say(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// "changed a, b" or "no view changed", for a line about one transaction.
fn changed(views: &[String]) -> String {
    match views.is_empty() {
        true => "no view changed".to_string(),
        false => format!("changed {}", views.join(", ")),
    }
}

/// `; 21.4MiB of its changes spilled to the temp space` when some did, else nothing.
fn spilled_text(bytes: u64) -> String {
    match bytes {
        0 => String::new(),
        b => format!("; {} of its changes spilled to the temp space", fmt_bytes(b)),
    }
}

pub async fn apply(settings: &Settings, config: &Config, args: ViewsApplyArgs) -> Result<()> {
    let (mut views, governor, _temp) = open(settings, config, &args.dir, true).await?;
    let report = views
        .apply(
            &|f| {
                let spilled = spilled_text(f.spilled);
                println!(
                    "applied {} ({}, {} rows) in {:.1}ms: {}{spilled}",
                    f.file,
                    f.table,
                    f.rows,
                    f.us as f64 / 1000.0,
                    changed(&f.views_changed)
                )
            },
            &|t| {
                println!(
                    "applied PostgreSQL transaction {} ({} rows, {} part(s)) in {:.1}ms: {}{}",
                    spillway_live::cdc::lsn_text(t.end_lsn),
                    t.rows,
                    t.parts,
                    t.us as f64 / 1000.0,
                    changed(&t.views_changed),
                    spilled_text(t.spilled)
                )
            },
        )
        .await?;
    let from_postgres = match views.follows_postgres() {
        true => format!(", {} PostgreSQL transaction(s)", report.transactions.len()),
        false => String::new(),
    };
    println!(
        "{} change file(s){from_postgres} applied; started in {}ms ({} logged transaction(s) replayed); peak RSS {}",
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
    let (views, _governor, _temp) = open(settings, config, &args.dir, false).await?;
    for line in views.explain(args.view.as_deref())? {
        println!("{line}");
    }
    Ok(())
}

pub async fn status(config: &Config, args: ViewsArgs) -> Result<()> {
    let project = Project::from_config(&args.dir, config)?;
    let store = Store::open(&project.dir)?;
    if let Some(s) = store.read_serving()? {
        if std::path::Path::new(&format!("/proc/{}", s.pid)).exists() {
            println!("served by process {} since {}: {}/status", s.pid, s.started_at, s.url);
        }
    }
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
            match &v.stopped {
                Some(why) => format!("STOPPED: {why}"),
                None => v.last_change.as_deref().unwrap_or("-").to_string(),
            }
        );
    }
    if let (Some(slot), Some(lsn)) = (&status.slot, &status.slot_lsn) {
        println!("following PostgreSQL through slot {slot}, durable up to {lsn}");
    }
    slots_left_behind(&project).await;
    Ok(())
}

/// Replication slots of ours in the databases the project's sources read: PostgreSQL keeps WAL
/// for each until it is consumed or dropped, so one that no source follows is called out.
async fn slots_left_behind(project: &Project) {
    for (db, found) in spillway_live::cdc::slots(project).await {
        match found {
            Ok(slots) => {
                for s in slots {
                    if s.followed {
                        println!(
                            "slot {}: holds {} of WAL{}",
                            s.name,
                            fmt_bytes(s.wal_held),
                            if s.active { " (streaming)" } else { "" }
                        );
                    } else {
                        println!(
                            "slot {} in {db}: no source follows it, and PostgreSQL keeps {} of WAL for it (and more as \
                             the database changes): drop it with SELECT pg_drop_replication_slot('{}')",
                            s.name,
                            fmt_bytes(s.wal_held),
                            s.name
                        );
                    }
                }
            }
            Err(e) => println!("slots in {db}: not checked ({e})"),
        }
    }
}
