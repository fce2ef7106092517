//! `spillway cluster up`: a Ballista scheduler and executors on this machine until Ctrl-C; and
//! `spillway cluster executor`, one executor (what `up` starts, or by hand on another machine).

use crate::args::{ClusterExecutorArgs, ClusterUpArgs, GlobalArgs};
use crate::settings::Settings;
use anyhow::{Context, Result};
use spillway_cluster::executor::ExecutorOptions;
use spillway_cluster::local::{LocalCluster, LocalOptions};
use spillway_governor::{fmt_bytes, GovernorConfig};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

pub async fn up(settings: &Settings, global: &GlobalArgs, args: ClusterUpArgs) -> Result<()> {
    anyhow::ensure!(args.executors >= 1, "--executors must be at least 1");
    let exe = std::env::current_exe().context("finding the spillway binary to start executors")?;
    // What the executors must see as this process does: the same [governor] section and ledger.
    let mut pass = Vec::new();
    if let Some(config) = &settings.config_file {
        pass.extend(["--config".to_string(), config.display().to_string()]);
    }
    if let Some(ledger) = &global.ledger {
        pass.extend(["--ledger".to_string(), ledger.clone()]);
    }
    let ledger_capacity = settings.governor.ledger.as_ref().map(|l| l.capacity);
    let vcores = args.vcores.unwrap_or_else(|| (settings.cores.count / args.executors).max(1));
    let budget = settings.budget.bytes;
    let work_dir = settings.spill_dir.join("spillway").join(format!("cluster-{}", std::process::id()));
    let options = LocalOptions {
        host: args.host.clone(),
        port: args.port,
        executors: args.executors,
        budget,
        vcores,
        exe,
        args: pass,
        ledger_capacity,
        work_dir,
    };
    let mut cluster = LocalCluster::start(options).await?;
    let url = cluster.url().clone();
    let share = budget / args.executors as u64;
    let pool = GovernorConfig { budget: share, ..settings.governor.clone() }.leasable();
    println!("Ballista cluster up at {url}: the scheduler in this process (pid {})", std::process::id());
    for e in cluster.executors() {
        println!(
            "  {}  pid {}  share {} ({}), pool {}, {vcores} task(s) at once; log {}",
            e.id,
            e.pid,
            fmt_bytes(e.share),
            e.confinement(),
            fmt_bytes(pool),
            e.log.display()
        );
    }
    println!(
        "Use it: [engine] url = \"{url}\" in spillway.toml, and engine = \"ballista\" on the models to run there."
    );
    println!("Ctrl-C stops it.");
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let exited = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break None,
            _ = term.recv() => break None,
            _ = tick.tick() => {
                if let Some(why) = cluster.exited() {
                    break Some(why);
                }
            }
        }
    };
    for s in cluster.stop() {
        println!(
            "stopped {}: peak {} (peak RSS {}) of its {} share",
            s.id,
            s.peak.map_or("unknown".into(), fmt_bytes),
            s.peak_rss.map_or("unknown".into(), fmt_bytes),
            fmt_bytes(s.share)
        );
    }
    match exited {
        Some(why) => anyhow::bail!("the cluster at {url} stopped: {why}"),
        None => Ok(()),
    }
}

pub async fn executor(settings: &Settings, args: ClusterExecutorArgs) -> Result<()> {
    let mut governor = settings.governor.clone();
    if let (Some(ledger), Some(capacity)) = (governor.ledger.as_mut(), args.ledger_capacity) {
        ledger.capacity = capacity;
    }
    let options = ExecutorOptions {
        id: args.id,
        scheduler: args.scheduler.parse()?,
        host: args.host,
        port: args.port,
        grpc_port: args.grpc_port,
        vcores: args.vcores,
        governor,
        unspillable_reserve: settings.unspillable_reserve,
        work_dir: args.work_dir,
    };
    spillway_cluster::executor::serve(options).await?;
    Ok(())
}
