//! Integration tests of the hand-off store and temp-space hygiene.
//!
//! Index:
//! - `tier_*`: which tier a result lands in, and reading it back (zero copy, round trips).
//! - `escalation_*`: memory → IPC mid-stream.
//! - `quota_*`, `cleanup_*`, `sweep_*`: disk quota, file removal, dead-process run directories.

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use spillway_governor::{Governor, GovernorConfig};
use spillway_tiers::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tpchgen::generators::LineItemGenerator;
use tpchgen_arrow::LineItemArrow;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: u64 = 1 << 20;

/// TPC-H lineitem at `sf` as batches (SF0.01 ≈ 60k rows ≈ 10MiB of Arrow).
fn lineitem(sf: f64) -> Vec<RecordBatch> {
    LineItemArrow::new(LineItemGenerator::new(sf, 1, 1)).with_batch_size(8192).map(|b| b.unwrap()).collect()
}

fn stream_of(batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
    let schema = batches[0].schema();
    Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches.into_iter().map(Ok))))
}

struct Fixture {
    governor: Governor,
    store: HandoffStore,
    quota: Arc<DiskQuota>,
    dir: PathBuf,
    _run: RunDir,
}

fn fixture(name: &str, budget_mib: u64, quota: u64) -> Fixture {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tiers-{name}"));
    let _ = std::fs::remove_dir_all(&root);
    let (root, _) = SpillRoot::open(&root).unwrap();
    let run = root.create_run_dir().unwrap();
    let dir = run.subdir("handoff").unwrap();
    let mut c = GovernorConfig::new(budget_mib * MIB);
    c.sample_interval = Duration::from_secs(3600); // the test process's RSS must not squeeze it
    let governor = Governor::new(c).unwrap();
    let quota = DiskQuota::new(quota);
    let store = HandoffStore::new(governor.clone(), &dir, quota.clone(), TierConfig::for_budget(budget_mib * MIB));
    Fixture { governor, store, quota, dir, _run: run }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

async fn read_back(inter: &Arc<Intermediate>) -> RecordBatch {
    let ctx = SessionContext::new();
    read::register(&ctx, "t", inter, 2).await.unwrap();
    let batches = ctx.sql("SELECT * FROM t ORDER BY l_orderkey, l_linenumber").await.unwrap().collect().await.unwrap();
    concat_batches(inter.schema(), &batches).unwrap()
}

#[tokio::test]
async fn tier_small_result_stays_in_memory_zero_copy() {
    let f = fixture("memory", 256, u64::MAX);
    let input = lineitem(0.01);
    let inter = f.store.write("small", stream_of(input.clone()), &Hints::default()).await.unwrap();
    let info = inter.info().clone();
    assert_eq!(info.tier, Tier::Memory, "{info:?}");
    assert_eq!(info.rows, input.iter().map(|b| b.num_rows() as u64).sum::<u64>());
    assert!(info.reason.contains("fits in memory"), "{info:?}");
    assert!(f.governor.leased() >= info.bytes && info.bytes > MIB, "memory is charged to the governor");
    // Reading it back as a table hands out the very same buffers.
    let table = read::table(&inter, 1).unwrap();
    let ctx = SessionContext::new();
    let scan = table.scan(&ctx.state(), None, &[], None).await.unwrap();
    let scanned: Vec<RecordBatch> = scan.execute(0, ctx.task_ctx()).unwrap().map(|b| b.unwrap()).collect().await;
    assert_eq!(scanned.len(), input.len());
    for (a, b) in input.iter().zip(&scanned) {
        assert!(store::same_buffers(a.column(0).as_ref(), b.column(0).as_ref()), "memory tier must not copy");
    }
    drop(inter);
    assert_eq!(f.governor.leased(), 0, "dropping the last consumer returns the memory");
    assert!(files_in(&f.dir).is_empty());
}

#[tokio::test]
async fn tier_ipc_and_parquet_round_trip_equal_the_input() {
    let f = fixture("roundtrip", 256, u64::MAX);
    let input = lineitem(0.01);
    let expected = concat_batches(&input[0].schema(), &input).unwrap();
    for m in [Materialize::Ipc, Materialize::Parquet] {
        let hints = Hints { materialize: m, ..Default::default() };
        let inter = f.store.write("rt", stream_of(input.clone()), &hints).await.unwrap();
        let path = inter.path().unwrap().to_path_buf();
        assert!(path.is_file());
        assert_eq!(inter.info().bytes, std::fs::metadata(&path).unwrap().len());
        let back = read_back(&inter).await;
        assert_eq!(back, expected, "{m:?} round trip");
        drop(inter);
        assert!(!path.exists(), "the file goes with the last consumer");
    }
    assert_eq!(f.quota.used(), 0);
}

#[tokio::test]
async fn tier_checkpoint_heavy_and_expected_size_go_to_parquet() {
    let f = fixture("parquet", 256, u64::MAX);
    let cases = [
        (Hints { checkpoint: true, ..Default::default() }, "checkpoint"),
        (Hints { heavy_running: true, ..Default::default() }, "heavy step"),
        (Hints { expected_bytes: Some(250 * MIB), ..Default::default() }, "parquet_above"),
    ];
    for (hints, why) in cases {
        let inter = f.store.write("p", stream_of(lineitem(0.001)), &hints).await.unwrap();
        assert_eq!(inter.info().tier, Tier::Parquet);
        assert!(inter.info().reason.contains(why), "{:?}", inter.info());
    }
}

#[tokio::test]
async fn escalation_memory_to_ipc_midstream_without_holding_the_whole_result() {
    // 64MiB budget: in_memory_max is 28.8MiB; lineitem SF0.1 is ~100MiB of Arrow.
    let f = fixture("escalate", 64, u64::MAX);
    let in_memory_max = f.store.config().in_memory_max;
    let peak_leased = Arc::new(AtomicU64::new(0));
    let (gov, peak) = (f.governor.clone(), peak_leased.clone());
    let input = lineitem(0.1);
    let rows: u64 = input.iter().map(|b| b.num_rows() as u64).sum();
    let schema = input[0].schema();
    let watched = futures::stream::iter(input).map(move |b| {
        peak.fetch_max(gov.leased(), Ordering::Relaxed);
        Ok(b)
    });
    let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(schema, watched));
    let inter = f.store.write("big", stream, &Hints::default()).await.unwrap();
    let info = inter.info();
    assert_eq!(info.tier, Tier::Ipc, "{info:?}");
    assert!(info.reason.contains("outgrew the memory tier"), "{info:?}");
    assert_eq!(info.rows, rows);
    assert!(peak_leased.load(Ordering::Relaxed) <= in_memory_max, "never held more than in_memory_max");
    assert_eq!(f.governor.leased(), 0, "memory is returned once the result moves to disk");
    let ctx = SessionContext::new();
    read::register(&ctx, "t", &inter, 2).await.unwrap();
    let n = ctx.sql("SELECT count(*) AS n FROM t").await.unwrap().collect().await.unwrap();
    assert_eq!(n[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0) as u64, rows);
}

#[tokio::test]
async fn quota_exceeded_gives_the_error_and_removes_partial_files() {
    let f = fixture("quota", 256, 2 * MIB);
    let hints = Hints { materialize: Materialize::Ipc, ..Default::default() };
    let err = f.store.write("too_big", stream_of(lineitem(0.01)), &hints).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("disk quota for temp files exceeded") && msg.contains("quota 2MiB"), "{msg}");
    assert!(files_in(&f.dir).is_empty(), "partial file must be removed: {:?}", files_in(&f.dir));
    assert_eq!(f.quota.used(), 0);
}

#[tokio::test]
async fn cleanup_failed_stream_leaves_no_file() {
    let f = fixture("failed", 256, u64::MAX);
    let mut input: Vec<datafusion::error::Result<RecordBatch>> = lineitem(0.001).into_iter().map(Ok).collect();
    input.push(Err(datafusion::error::DataFusionError::Execution("step blew up".into())));
    let schema = input[0].as_ref().unwrap().schema();
    let stream = Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(input)));
    let hints = Hints { materialize: Materialize::Parquet, ..Default::default() };
    let err = f.store.write("fails", stream, &hints).await.unwrap_err();
    assert!(err.to_string().contains("step blew up"));
    assert!(files_in(&f.dir).is_empty());
}

#[test]
fn cleanup_panic_in_a_step_leaves_no_files() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiers-panic");
    let _ = std::fs::remove_dir_all(&root);
    let (spill_root, _) = SpillRoot::open(&root).unwrap();
    let result = std::panic::catch_unwind(|| {
        let run = spill_root.create_run_dir().unwrap();
        std::fs::write(run.subdir("handoff").unwrap().join("x.arrow"), vec![0u8; 4096]).unwrap();
        panic!("step panicked");
    });
    assert!(result.is_err());
    assert!(files_in(&root).is_empty(), "run dir must be gone: {:?}", files_in(&root));
}

#[test]
fn sweep_removes_run_dirs_of_dead_processes_only() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiers-sweep");
    let _ = std::fs::remove_dir_all(&root);
    let (spill_root, _) = SpillRoot::open(&root).unwrap();
    let mine = spill_root.create_run_dir().unwrap();
    // A run directory whose owner has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = root.join(format!("run-{dead_pid}-1"));
    std::fs::create_dir_all(stale.join("handoff")).unwrap();
    std::fs::write(stale.join("LOCK"), format!("{dead_pid} 12345\n")).unwrap();
    std::fs::write(stale.join("handoff/x.arrow"), vec![0u8; 1000]).unwrap();
    let (_, swept) = SpillRoot::open(&root).unwrap();
    assert_eq!(swept.dirs, vec![stale.clone()]);
    assert!(swept.bytes >= 1000);
    assert!(!stale.exists());
    assert!(mine.path().exists(), "a live process's run dir stays");
}
