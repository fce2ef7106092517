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
use spillway_tiers::owner::Owner;
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
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiers-panic");
    let _ = std::fs::remove_dir_all(&dir);
    let (spill_root, _) = SpillRoot::open(&dir).unwrap();
    let result = std::panic::catch_unwind(|| {
        let run = spill_root.create_run_dir().unwrap();
        std::fs::write(run.subdir("handoff").unwrap().join("x.arrow"), vec![0u8; 4096]).unwrap();
        panic!("step panicked");
    });
    assert!(result.is_err());
    let root = SpillRoot::path_for(&dir);
    assert!(files_in(&root).is_empty(), "run dir must be gone: {:?}", files_in(&root));
}

/// A process that has exited: its pid, with this process's boot and namespace.
fn dead_owner() -> Owner {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    Owner { pid, ..Owner::current() }
}

fn plant(dir: &Path, marker: Option<String>) {
    std::fs::create_dir_all(dir.join("handoff")).unwrap();
    std::fs::write(dir.join("handoff/x.arrow"), vec![0u8; 1000]).unwrap();
    if let Some(m) = marker {
        std::fs::write(dir.join(spillway_tiers::rundir::MARKER), m).unwrap();
    }
}

/// Issue #13: the sweep removes only run folders spillway marked as its own whose owner is dead
/// (same boot and PID namespace, or another boot); never a folder without a valid marker, a
/// symlink, a live or unjudgeable owner's folder, or anything outside `<spill dir>/spillway/`;
/// `inspect` (what `spillway info` shows) removes nothing.
#[test]
fn issue_13_sweep_removes_only_what_spillway_made_for_a_dead_process() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiers-sweep");
    let _ = std::fs::remove_dir_all(&dir);
    // What a user keeps in the folder they pass as --spill-dir: never touched.
    std::fs::create_dir_all(dir.join("run-mine")).unwrap();
    std::fs::write(dir.join("run-mine/notes.txt"), "keep").unwrap();
    let (spill_root, _) = SpillRoot::open(&dir).unwrap();
    let root = SpillRoot::path_for(&dir);
    let mine = spill_root.create_run_dir().unwrap();
    let dead = dead_owner();
    let marker = spillway_tiers::rundir::marker_for;
    plant(&root.join("run-dead"), Some(marker(&dead)));
    plant(&root.join("run-other-boot"), Some(marker(&Owner { boot: "0".repeat(32), ..dead.clone() })));
    plant(&root.join("run-other-ns"), Some(marker(&Owner { pid_ns: dead.pid_ns + 1, ..dead.clone() })));
    plant(&root.join("run-no-marker"), None);
    plant(&root.join("run-foreign"), Some(format!("{} 0\n", dead.pid))); // an old-style LOCK-like file
                                                                         // A symlink named like a run folder, pointing at a dead-marked folder outside the root.
    let outside = dir.join("outside");
    plant(&outside, Some(marker(&dead)));
    std::os::unix::fs::symlink(&outside, root.join("run-link")).unwrap();

    let would = SpillRoot::inspect(&dir);
    assert_eq!(would.dirs.len(), 2, "{would:?}");
    assert!(root.join("run-dead").exists(), "inspect removes nothing");

    let (_, swept) = SpillRoot::open(&dir).unwrap();
    let mut removed: Vec<String> =
        swept.dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    removed.sort();
    assert_eq!(removed, ["run-dead", "run-other-boot"]);
    assert!(swept.bytes >= 2000);
    for kept in ["run-other-ns", "run-no-marker", "run-foreign", "run-link"] {
        assert!(std::fs::symlink_metadata(root.join(kept)).is_ok(), "{kept} must stay");
    }
    assert!(outside.join("handoff/x.arrow").exists(), "a symlink is never followed");
    assert!(dir.join("run-mine/notes.txt").exists(), "nothing outside spillway/ is touched");
    assert!(mine.path().exists(), "a live process's run folder stays");
}

/// Issue #13: staging files (`.NAME.spillway-tmp-<owner>`) of dead processes are removed (a
/// staged symlink itself, never its target); a live process's and files of other names stay.
#[test]
fn issue_13_staging_files_of_dead_processes_are_swept() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiers-staging");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dead = dead_owner();
    let dead_file = dir.join(format!(".out.parquet.spillway-tmp-{}", dead.tag()));
    let dead_dir = dir.join(format!(".lineitem.spillway-tmp-{}", dead.tag()));
    std::fs::write(&dead_file, vec![0u8; 100]).unwrap();
    std::fs::create_dir_all(&dead_dir).unwrap();
    std::fs::write(dead_dir.join("part-1.parquet"), vec![0u8; 100]).unwrap();
    let live = spillway_tiers::staging::staging_path(&dir.join("live.parquet"));
    std::fs::write(&live, b"x").unwrap();
    std::fs::write(dir.join(".out.parquet.tmp-1"), b"x").unwrap();
    let target = dir.join("target.parquet");
    std::fs::write(&target, b"kept").unwrap();
    let link = dir.join(format!(".link.spillway-tmp-{}", dead.tag()));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let swept = spillway_tiers::staging::sweep(&dir);
    assert_eq!(swept.dirs.len(), 3, "{swept:?}");
    assert!(!dead_file.exists() && !dead_dir.exists());
    assert!(std::fs::symlink_metadata(&link).is_err() && target.exists(), "the link goes, its target stays");
    assert!(live.exists());
    assert!(dir.join(".out.parquet.tmp-1").exists());
}

/// A session whose spill files come from `temp` (as `spillway-engine` builds them), with a small
/// memory pool so a sort spills.
fn spilling_session(temp: &Arc<QuotaTempFiles>) -> SessionContext {
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(24 << 20)))
        .with_disk_manager_builder(temp.disk_manager(None))
        .build_arc()
        .unwrap();
    let mut config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
    config.options_mut().execution.sort_spill_reservation_bytes = 2 << 20;
    SessionContext::new_with_config_rt(config, runtime)
}

const SPILLING_SORT: &str = "SELECT value FROM generate_series(1, 6000000) ORDER BY value DESC";

/// Issue #13: `--max-spill` is one quota for the process. Two sessions spilling at once draw
/// from it together (each used to get a DiskManager allowed the whole quota): while the first
/// holds its spill files, the second is refused at the quota, and usage never passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_shared_by_every_session_of_the_process() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiers-shared-quota");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // How much one such sort spills.
    let alone = DiskQuota::new(u64::MAX);
    let temp = QuotaTempFiles::new(dir.join("a"), alone.clone());
    let rows = spilling_session(&temp).sql(SPILLING_SORT).await.unwrap().collect().await.unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 6_000_000);
    let one = alone.peak();
    assert!(one > 8 << 20, "the sort must spill: {one}");
    assert_eq!(alone.used(), 0, "spill files are released when the query ends");

    // Room for one and a half: the second sort cannot spill while the first holds its files.
    let quota = DiskQuota::new(one * 3 / 2);
    let temp = QuotaTempFiles::new(dir.join("b"), quota.clone());
    let first = spilling_session(&temp);
    let mut held = first.sql(SPILLING_SORT).await.unwrap().execute_stream().await.unwrap();
    held.next().await.unwrap().unwrap(); // sorted: every run is spilled and being merged
    assert!(quota.used() > one / 2, "the first sort holds its spill files: {}", quota.used());
    let err = spilling_session(&temp).sql(SPILLING_SORT).await.unwrap().collect().await.unwrap_err().to_string();
    assert!(err.contains("disk quota for temp files exceeded"), "{err}");
    assert!(quota.peak() <= quota.max(), "peak {} over the quota {}", quota.peak(), quota.max());
    drop(held);
    drop(first);
    // The sort's tasks end (and drop their spill files) as their abort is processed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while quota.used() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(quota.used(), 0, "dropped spill files return to the quota");
    let again = spilling_session(&temp).sql(SPILLING_SORT).await.unwrap().collect().await.unwrap();
    assert_eq!(again.iter().map(|b| b.num_rows()).sum::<usize>(), 6_000_000, "alone it fits");
    assert!(files_in(&dir.join("b")).is_empty(), "spill files are deleted: {:?}", files_in(&dir.join("b")));
}
