//! One module per subcommand; [`run`] dispatches and owns the tokio runtime.

mod bench;
mod cluster;
mod gen;
mod info;
mod init;
mod live;
mod plan;
mod report;
mod run;
mod sql;
mod views;

use crate::args::{BenchCommand, Cli, ClusterCommand, Command, GenCommand, ViewsCommand};
use crate::settings;
use anyhow::{Context, Result};

pub fn run(cli: Cli) -> Result<()> {
    let (project, overrides) = match &cli.command {
        Command::Plan(a) => (Some(a.dir.as_path()), a.overrides.as_slice()),
        Command::Run(a) | Command::Retry(a) => (Some(a.dir.as_path()), a.overrides.as_slice()),
        Command::Views(ViewsCommand::Apply(a)) => (Some(a.dir.as_path()), a.overrides.as_slice()),
        Command::Views(ViewsCommand::Status(a)) => (Some(a.dir.as_path()), a.overrides.as_slice()),
        Command::Views(ViewsCommand::Explain(a)) => (Some(a.dir.as_path()), a.overrides.as_slice()),
        Command::Views(ViewsCommand::Serve(a)) => (Some(a.dir.as_path()), a.overrides.as_slice()),
        Command::Sql(a) => (a.project.as_deref(), &[][..]),
        _ => (None, &[][..]),
    };
    // `spillway.toml` is read here, once; `plan` and `run` build their project from it.
    let config = settings::load_config(&cli.global, project, overrides)?;
    let settings = settings::resolve(&cli.global, &config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.cores.count)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Info => info::run(&settings),
        Command::Sql(args) => runtime.block_on(sql::run(&settings, &config, args)),
        Command::Plan(args) => runtime.block_on(plan::run(&settings, &config, args)),
        Command::Run(args) => runtime.block_on(run::run(&settings, &config, args)),
        Command::Retry(mut args) => {
            args.resume = true;
            if args.select.is_none() {
                args.select = spillway_pipeline::manifest::Manifest::latest(&args.dir).and_then(|m| m.select);
            }
            runtime.block_on(run::run(&settings, &config, args))
        }
        Command::Views(ViewsCommand::Apply(args)) => runtime.block_on(views::apply(&settings, &config, args)),
        Command::Views(ViewsCommand::Explain(args)) => runtime.block_on(views::explain(&settings, &config, args)),
        Command::Views(ViewsCommand::Status(args)) => runtime.block_on(views::status(&config, args)),
        Command::Views(ViewsCommand::Serve(args)) => runtime.block_on(views::serve(&settings, &config, args)),
        Command::Report(args) => report::run(args),
        Command::Init(args) => init::run(args),
        Command::Gen(GenCommand::Tpch(args)) => gen::tpch(&settings, args),
        Command::Gen(GenCommand::TpchChanges(args)) => runtime.block_on(gen::tpch_changes(args)),
        Command::Bench(BenchCommand::Tpch(args)) => bench::run(&settings, args),
        Command::Cluster(ClusterCommand::Up(args)) => runtime.block_on(cluster::up(&settings, &cli.global, args)),
        Command::Cluster(ClusterCommand::Executor(args)) => runtime.block_on(cluster::executor(&settings, args)),
        Command::Worker => unreachable!("main starts the worker before any settings are read"),
    }
}
