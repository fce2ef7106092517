//! `spillway gen tpch`: TPC-H data to Parquet with a progress bar; `gen tpch-changes`: a change
//! stream over it for incremental views.

use crate::args::{GenTpchArgs, GenTpchChangesArgs};
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

pub async fn tpch_changes(args: GenTpchChangesArgs) -> Result<()> {
    let ctx = datafusion::prelude::SessionContext::new();
    spillway_engine::tables::register_data_dir(&ctx, &args.data)
        .await
        .with_context(|| format!("reading TPC-H data in {}", args.data.display()))?;
    let orders: u64 = ctx.table("orders").await?.count().await? as u64;
    if args.batches * (args.orders as u64) * 3 / 2 >= orders {
        anyhow::bail!(
            "{} batches of {} orders would delete or update some orders twice: the data has {orders} orders",
            args.batches,
            args.orders
        );
    }
    let mut total = 0u64;
    for batch in 0..args.batches {
        let mut by_table: std::collections::BTreeMap<String, Vec<arrow::array::RecordBatch>> = Default::default();
        for (table, b) in tpch::refresh_changes(&ctx, args.orders, batch).await? {
            by_table.entry(table).or_default().push(b);
        }
        let mut rows = 0u64;
        for (table, batches) in by_table {
            let dir = args.out.join(&table);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let schema = batches[0].schema();
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            rows += n as u64;
            let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(batches.into_iter().map(Ok)),
            ));
            let path = dir.join(format!("{batch:06}.parquet"));
            spillway_tiers::file::write_stream(stream, &path, &spillway_tiers::WriteOptions::default()).await?;
        }
        total += rows;
        println!("batch {batch}: {rows} change rows");
    }
    println!("{} batches, {total} change rows in {}", args.batches, args.out.display());
    Ok(())
}
