//! `spillway gen tpch`: TPC-H data to Parquet with a progress bar.

use crate::args::GenTpchArgs;
use crate::settings::Settings;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use spillway_engine::tpch;
use spillway_governor::fmt_bytes;
use std::time::Instant;

pub fn tpch(settings: &Settings, args: GenTpchArgs) -> Result<()> {
    let total: u64 = tpch::TABLES.iter().map(|t| tpch::expected_rows(t, args.sf)).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} TPC-H sf{msg} [{bar:30}] {human_pos}/{human_len} rows {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("{}", args.sf));
    let started = Instant::now();
    let tables = tpch::generate(args.sf, &args.out, settings.cores.count, &|rows| bar.inc(rows))
        .with_context(|| format!("generating TPC-H sf{} into {}", args.sf, args.out.display()))?;
    bar.finish_and_clear();
    let mut rows = 0;
    let mut bytes = 0;
    for t in &tables {
        println!("{:<10} {:>12} rows {:>10}  {}", t.table, t.rows, fmt_bytes(t.bytes), t.path.display());
        rows += t.rows;
        bytes += t.bytes;
    }
    println!("TPC-H sf{}: {rows} rows, {} in {:.1}s", args.sf, fmt_bytes(bytes), started.elapsed().as_secs_f64());
    Ok(())
}
