//! `spillway run [DIR]`: runs a project under the budget and shows what happens: progress bars
//! on a terminal, otherwise one plain line per model (`3 of 9 OK model [1.2s, peak 120MiB, ipc]`).

use crate::args::{MaterializeArg, RunArgs};
use crate::settings::Settings;
use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use spillway_governor::{fmt_bytes, Governor};
use spillway_pipeline::results::SinkResult;
use spillway_pipeline::{run, Event, RunOptions, Status, StepResult};
use spillway_project::{Config, Project};
use spillway_tiers::Materialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub async fn run(settings: &Settings, config: &Config, args: RunArgs) -> Result<()> {
    let project = Project::from_config(&args.dir, config)?;
    // Finds the isolation in force, and removes child cgroups that runners which are gone left.
    spillway_isolate::Confinement::detect();
    let governor = Governor::new(settings.governor.clone())?;
    let mut options = RunOptions::new(settings.cores.count, &settings.spill_dir);
    options.select = args.select.clone();
    options.fail_fast = args.fail_fast;
    options.resume = args.resume;
    if let Some(j) = args.jobs {
        options.jobs = j.max(1);
    }
    options.max_spill = settings.max_spill;
    options.unspillable_reserve = settings.unspillable_reserve;
    options.materialize = args.materialize.map(|m| match m {
        MaterializeArg::Memory => Materialize::Memory,
        MaterializeArg::Ipc => Materialize::Ipc,
        MaterializeArg::Parquet => Materialize::Parquet,
    });
    // Generate TPC-H data in a child process: tpchgen keeps ~300MiB for the process's life.
    if let Ok(exe) = std::env::current_exe() {
        options.generator = spillway_project::sources::Generator::Command(exe.clone());
        // Isolated models run in `spillway worker` children of this same binary.
        options.worker = Some(exe);
    }
    let cancel = Arc::new(tokio::sync::Notify::new());
    options.cancel = Some(cancel.clone());
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping running models (Ctrl-C again to quit at once)");
            cancel.notify_one();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            // Temp files left behind are swept at the next start.
            std::process::exit(130);
        }
    });

    let display = Arc::new(Display::new(!args.plain && std::io::stderr().is_terminal(), governor.clone()));
    let d = display.clone();
    let results = run::run(&project, &governor, options, Arc::new(move |e: &Event| d.on(e))).await;
    display.finish();
    interrupt.abort();
    let results = results?;

    let count = |st: Status| results.steps.iter().filter(|s| s.status == st).count();
    println!(
        "{} ok, {} failed, {} skipped in {:.1}s · peak resident {} of {} budget ({:.0}%) · spilled {}",
        count(Status::Ok),
        count(Status::Error),
        count(Status::Skipped),
        results.elapsed_ms as f64 / 1000.0,
        fmt_bytes(results.peak_resident_bytes),
        fmt_bytes(results.budget_bytes),
        100.0 * results.peak_resident_bytes as f64 / results.budget_bytes.max(1) as f64,
        fmt_bytes(results.spilled_bytes),
    );
    let run_dir = spillway_pipeline::results::runs_dir(&project.dir).join(&results.run_id);
    println!(
        "results: {}  (HTML: spillway report {})",
        run_dir.join("run_results.json").display(),
        project.dir.display()
    );
    if results.status != Status::Ok {
        let first = results.steps.iter().find(|s| s.status == Status::Error).and_then(|s| s.error.clone());
        match first {
            Some(e) => bail!("{} model(s) failed; first: {e}", count(Status::Error)),
            None => bail!("the run stopped before {} model(s) ran", count(Status::Skipped)),
        }
    }
    Ok(())
}

/// Live progress: bars on a terminal, plain lines otherwise.
struct Display {
    bars: Option<Bars>,
    state: Mutex<State>,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

#[derive(Default)]
struct State {
    total: usize,
    finished: usize,
    running: HashMap<String, ProgressBar>,
    source: Option<ProgressBar>,
    announced_source: bool,
}

impl Display {
    fn new(fancy: bool, governor: Governor) -> Self {
        let bars = fancy.then(|| {
            // Hidden until sources are ready: a child process generating data draws its own bar.
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} models  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            overall.enable_steady_tick(Duration::from_millis(200));
            super::live::show_memory(&overall, &governor);
            Bars { multi, overall }
        });
        Self { bars, state: Mutex::new(State::default()) }
    }

    fn on(&self, event: &Event) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::RunStarted { models, budget_bytes, run_id, .. } => {
                st.total = models.len();
                match &self.bars {
                    Some(b) => b.overall.set_length(models.len() as u64),
                    None => println!("run {run_id}: {} models, budget {}", models.len(), fmt_bytes(*budget_bytes)),
                }
            }
            Event::SourceProgress { source, rows, total } => match &self.bars {
                Some(b) => {
                    let bar = st.source.get_or_insert_with(|| {
                        let bar = b.multi.insert(0, ProgressBar::new(*total));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "  generating {msg} [{bar:30}] {human_pos}/{human_len} rows eta {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        bar.set_message(source.clone());
                        bar
                    });
                    bar.set_position(*rows);
                }
                None if !st.announced_source => {
                    st.announced_source = true;
                    println!("generating source {source} ({total} rows, once; cached in .spillway/data)");
                }
                None => {}
            },
            Event::SourcesReady { .. } => {
                if let Some(bar) = st.source.take() {
                    bar.finish_and_clear();
                }
                if let Some(b) = &self.bars {
                    b.multi.set_draw_target(ProgressDrawTarget::stderr());
                }
            }
            Event::ModelStarted { model, attempt, lease_bytes, .. } => {
                if let Some(b) = &self.bars {
                    let bar = st.running.entry(model.clone()).or_insert_with(|| {
                        let bar = b.multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {spinner} {elapsed:>4} {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar
                    });
                    let again = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                    bar.set_message(format!("{model}{again} · lease {}", fmt_bytes(*lease_bytes)));
                }
            }
            Event::ModelIsolated { model, pid, confinement, limit_bytes, .. } => {
                let what = format!("isolated: pid {pid}, {confinement} limit {}", fmt_bytes(*limit_bytes));
                match (&self.bars, st.running.get(model)) {
                    (Some(_), Some(bar)) => bar.set_message(format!("{} · {what}", bar.message())),
                    (None, _) => println!("  {model} {what}"),
                    _ => {}
                }
            }
            Event::ModelOnCluster { model, url, .. } => {
                let what = format!("on the Ballista cluster at {url}");
                match (&self.bars, st.running.get(model)) {
                    (Some(_), Some(bar)) => bar.set_message(format!("{} · {what}", bar.message())),
                    (None, _) => println!("  {model} {what}"),
                    _ => {}
                }
            }
            Event::ModelRetry { model, escalation, error, .. } => {
                let line = format!("  retry {model}: out of memory ({}); {escalation}", first_line(error));
                match &self.bars {
                    Some(b) => b.multi.println(line).unwrap_or(()),
                    None => println!("{line}"),
                }
            }
            Event::ModelFinished { step, .. } => {
                st.finished += 1;
                let line = format!("{:>3} of {} {}", st.finished, st.total, describe(step));
                if let Some(bar) = st.running.remove(&step.name) {
                    bar.finish_and_clear();
                }
                match &self.bars {
                    Some(b) => {
                        b.overall.inc(1);
                        b.multi.println(line).unwrap_or(());
                    }
                    None => println!("{line}"),
                }
            }
            Event::ModelQueued { .. } | Event::RunFinished { .. } => {}
        }
    }

    fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (_, bar) in st.running.drain() {
            bar.finish_and_clear();
        }
        if let Some(b) = &self.bars {
            b.overall.finish_and_clear();
        }
    }
}

/// `OK    model [1.23s, peak 120MiB, ipc 48MiB, 600000 rows]` and the like.
fn describe(step: &StepResult) -> String {
    if let Some(run) = &step.reused_from {
        return format!("REUSED {} [{} rows, from run {run}]", step.name, step.rows);
    }
    match step.status {
        Status::Ok => {
            let sinks: Vec<String> =
                step.sinks.iter().map(|s: &SinkResult| format!(" → {}", s.path.display())).collect();
            format!(
                "OK    {} [{:.2}s, peak {}, {} {}, {} rows{}{}{}{}]{}",
                step.name,
                step.elapsed_ms as f64 / 1000.0,
                fmt_bytes(step.peak_resident_bytes),
                step.tier.as_deref().unwrap_or("-"),
                fmt_bytes(step.bytes),
                step.rows,
                if step.spilled_bytes > 0 {
                    format!(", spilled {}", fmt_bytes(step.spilled_bytes))
                } else {
                    String::new()
                },
                if step.attempts > 1 { format!(", {} attempts", step.attempts) } else { String::new() },
                isolated(step),
                on_cluster(step),
                sinks.join("")
            )
        }
        Status::Error => format!(
            "ERROR {} [{:.2}s]: {}",
            step.name,
            step.elapsed_ms as f64 / 1000.0,
            step.error.as_deref().unwrap_or("failed")
        ),
        Status::Skipped => format!("SKIP  {} ({})", step.name, step.error.as_deref().unwrap_or("not run")),
    }
}

/// `, isolated pid 123 peak 80MiB of 160MiB` for a model run in a child process.
fn isolated(step: &StepResult) -> String {
    match &step.isolated {
        Some(i) => format!(
            ", isolated pid {} ({}) peak {} of {}",
            i.pid,
            i.confinement,
            i.peak_bytes.map_or("-".into(), fmt_bytes),
            fmt_bytes(i.limit_bytes)
        ),
        None => String::new(),
    }
}

/// `, ballista job Ab3x: 1.20s on the cluster` for a model run there.
fn on_cluster(step: &StepResult) -> String {
    match &step.cluster {
        Some(c) => format!(
            ", ballista job {}: {:.2}s on the cluster, {:.2}s queued",
            c.job.job_id,
            c.job.execution_ms as f64 / 1000.0,
            c.job.scheduling_ms as f64 / 1000.0
        ),
        None => String::new(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
