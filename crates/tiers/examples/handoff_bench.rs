//! Hand-off throughput: TPC-H lineitem at scale factor SF, generated into memory, handed off
//! through each tier by the same `HandoffStore` code the pipeline uses, next to `dd` writing the
//! same number of bytes to the same disk.
//!
//! ```sh
//! cargo run --release -p spillway-tiers --example handoff_bench -- [SF] [DIR]   # defaults: 10, bench/data/handoff
//! ```

use arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use spillway_governor::{fmt_bytes, Governor, GovernorConfig};
use spillway_tiers::*;
use std::path::PathBuf;
use std::time::Instant;
use tpchgen::generators::LineItemGenerator;
use tpchgen_arrow::LineItemArrow;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn stream_of(batches: &[RecordBatch]) -> SendableRecordBatchStream {
    let schema = batches[0].schema();
    let owned: Vec<_> = batches.iter().cloned().map(Ok).collect();
    Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(owned)))
}

fn rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", fmt_bytes((bytes as f64 / secs) as u64))
}

/// `dd` of `bytes` zeros into `path`; returns seconds.
fn dd(path: &std::path::Path, bytes: u64, fsync: bool) -> f64 {
    let mut cmd = std::process::Command::new("dd");
    cmd.arg("if=/dev/zero").arg(format!("of={}", path.display())).arg("bs=1M").arg(format!("count={}", bytes >> 20));
    if fsync {
        cmd.arg("conv=fsync");
    }
    let t = Instant::now();
    let status = cmd.stderr(std::process::Stdio::null()).status().expect("dd");
    assert!(status.success());
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    secs
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let sf: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10.0);
    let dir = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "bench/data/handoff".into()));
    let (root, _) = SpillRoot::open(&dir)?;
    let run = root.create_run_dir()?;
    let handoff = run.subdir("handoff")?;

    // Generate lineitem in memory, one part per core.
    let t = Instant::now();
    let parts = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i32;
    let batches: Vec<RecordBatch> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=parts)
            .map(|p| {
                s.spawn(move || {
                    LineItemArrow::new(LineItemGenerator::new(sf, p, parts))
                        .with_batch_size(8192)
                        .map(|b| b.expect("generate"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("generator")).collect()
    });
    let mut tally = BufferTally::default();
    batches.iter().for_each(|b| {
        tally.add(b);
    });
    let arrow_bytes = tally.bytes();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!(
        "lineitem sf{sf}: {rows} rows, {} of Arrow in {} batches (generated in {:.1}s)",
        fmt_bytes(arrow_bytes),
        batches.len(),
        t.elapsed().as_secs_f64()
    );

    let mut config = GovernorConfig::new(arrow_bytes * 4);
    config.sample_interval = std::time::Duration::from_secs(3600);
    let governor = Governor::new(config)?;
    let store =
        HandoffStore::new(governor, &handoff, DiskQuota::new(u64::MAX), TierConfig::for_budget(arrow_bytes * 4));

    // Memory tier: cost of handing off (Arc clones) and of registering for reading.
    for share in [10, 1] {
        let slice = &batches[..batches.len() / share];
        let t = Instant::now();
        let hints = Hints { materialize: Materialize::Memory, ..Default::default() };
        let inter = store.write("mem", stream_of(slice), &hints).await?;
        let write = t.elapsed();
        let t = Instant::now();
        let _table = read::table(&inter, 2)?;
        println!(
            "memory tier, {:>10}: hand-off {:>8.2} ms, table {:>6.2} ms ({} batches, {:.0} ns/batch)",
            fmt_bytes(inter.info().bytes),
            write.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            slice.len(),
            write.as_nanos() as f64 / slice.len() as f64
        );
    }

    // Arrow IPC vs dd, interleaved three times (page-cache writes on these machines vary run to
    // run): write (page cache), fsync, then read back through mmap touching every byte.
    let (mut ipc_w, mut ipc_wf, mut dd_w, mut dd_wf, mut ipc_r) = (vec![], vec![], vec![], vec![], vec![]);
    let mut ipc_bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let hints = Hints { materialize: Materialize::Ipc, ..Default::default() };
        let ipc = store.write("ipc", stream_of(&batches), &hints).await?;
        let write = t.elapsed().as_secs_f64();
        ipc_bytes = ipc.info().bytes;
        let path = ipc.path().expect("file").to_path_buf();
        let t = Instant::now();
        std::fs::File::open(&path)?.sync_all()?;
        ipc_w.push(write);
        ipc_wf.push(write + t.elapsed().as_secs_f64());
        let t = Instant::now();
        let back = read::mmap_ipc(&path)?;
        let mut checksum = 0u64;
        for b in &back {
            for c in b.columns() {
                for buf in c.to_data().buffers() {
                    checksum =
                        checksum.wrapping_add(buf.as_slice().iter().step_by(4096).map(|&x| x as u64).sum::<u64>());
                }
            }
        }
        ipc_r.push(t.elapsed().as_secs_f64());
        std::hint::black_box(checksum);
        drop(back);
        drop(ipc);
        let probe = handoff.join("dd.bin");
        dd_w.push(dd(&probe, ipc_bytes, false));
        dd_wf.push(dd(&probe, ipc_bytes, true));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (iw, iwf, dw, dwf, ir) = (med(&mut ipc_w), med(&mut ipc_wf), med(&mut dd_w), med(&mut dd_wf), med(&mut ipc_r));
    println!(
        "ipc write    {:>10}: {:>12} (page cache), {:>12} with fsync   [median of 3]",
        fmt_bytes(ipc_bytes),
        rate(ipc_bytes, iw),
        rate(ipc_bytes, iwf)
    );
    println!(
        "dd           {:>10}: {:>12} (page cache), {:>12} with fsync   [median of 3]",
        fmt_bytes(ipc_bytes),
        rate(ipc_bytes, dw),
        rate(ipc_bytes, dwf)
    );
    println!("ipc / dd: {:.0}% (page cache), {:.0}% (with fsync)", 100.0 * dw / iw, 100.0 * dwf / iwf);
    println!("ipc read     {:>10}: {:>12} (mmap, every page touched)", fmt_bytes(ipc_bytes), rate(ipc_bytes, ir));

    // Parquet zstd(1).
    let t = Instant::now();
    let hints = Hints { materialize: Materialize::Parquet, ..Default::default() };
    let pq = store.write("pq", stream_of(&batches), &hints).await?;
    let pq_write = t.elapsed().as_secs_f64();
    println!(
        "parquet zstd(1) write: {} of Arrow -> {} in {pq_write:.2}s = {} of Arrow input",
        fmt_bytes(arrow_bytes),
        fmt_bytes(pq.info().bytes),
        rate(arrow_bytes, pq_write)
    );
    drop(pq);
    Ok(())
}
