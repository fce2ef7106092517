//! `spillway report [DIR]`: renders a run's `report.html` (see `spillway_pipeline::report`).

use crate::args::ReportArgs;
use anyhow::{Context, Result};
use spillway_pipeline::{report, results, RunResults};

pub fn run(args: ReportArgs) -> Result<()> {
    let run_dir = results::find_run(&args.dir, Some(&args.run))?;
    let results = RunResults::read(&run_dir)?;
    let timeline = results::read_timeline(&run_dir);
    let html = report::render(&results, &timeline);
    let out = args.out.unwrap_or_else(|| run_dir.join("report.html"));
    std::fs::write(&out, html).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}
