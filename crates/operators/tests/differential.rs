//! Differential tests: every join type, on random, skewed, all-equal and NULL keys, gives the
//! same answer under a pool of a few MiB (where the grace hash join goes out of core) as
//! DataFusion's own hash join with unbounded memory.

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use spillway_operators::{
    join_reports, GraceJoinRule, GraceOptions, JoinReport, SortedAggregateRule, SpillingSortRule, WindowGuardRule,
};
use std::sync::Arc;

/// A deterministic pseudo-random sequence (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy, Debug)]
enum Keys {
    /// Uniform in 0..n.
    Random(u64),
    /// Half the rows share key 0, the rest uniform in 0..n.
    Skewed(u64),
    /// Every row has key 1.
    AllEqual,
    /// Uniform in 0..n, one row in five NULL.
    WithNulls(u64),
    /// Uniform in 0..n, one row in a hundred NULL.
    RareNulls(u64),
}

/// A table `(k BIGINT, s VARCHAR, v BIGINT)` of `rows` rows in batches of 4096, `k` drawn from
/// `keys`; `s` is `k` as text (a string key), `v` a random payload.
fn table(rows: usize, keys: Keys, seed: u64) -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("v", DataType::Int64, false),
    ]));
    let mut rng = Rng(seed);
    let mut batches = Vec::new();
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(4096);
        let k: Vec<Option<i64>> = (0..n)
            .map(|_| match keys {
                Keys::Random(m) => Some((rng.next() % m) as i64),
                Keys::Skewed(m) => Some(if rng.next().is_multiple_of(2) { 0 } else { (rng.next() % m) as i64 }),
                Keys::AllEqual => Some(1),
                Keys::WithNulls(m) => (!rng.next().is_multiple_of(5)).then(|| (rng.next() % m) as i64),
                Keys::RareNulls(m) => (!rng.next().is_multiple_of(100)).then(|| (rng.next() % m) as i64),
            })
            .collect();
        let s: StringArray = k.iter().map(|k| k.map(|k| format!("key-{k}"))).collect();
        let v: Int64Array = (0..n).map(|_| (rng.next() % 1000) as i64).collect();
        let columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(k)), Arc::new(s), Arc::new(v)];
        batches.push(RecordBatch::try_new(schema.clone(), columns).unwrap());
        done += n;
    }
    // Two partitions, so the scans run in parallel as file scans would.
    let (a, b): (Vec<_>, Vec<_>) = batches.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let parts = vec![a.into_iter().map(|x| x.1).collect(), b.into_iter().map(|x| x.1).collect()];
    MemTable::try_new(schema, parts).unwrap()
}

/// DataFusion's `GreedyMemoryPool` with spillway's one exception (as in `LeasePool`):
/// `RepartitionExec` is always granted, since refusing it can deadlock DataFusion 55's
/// repartition spill pool (apache/datafusion#24883).
#[derive(Debug)]
struct TestPool(TrackConsumersPool<GreedyMemoryPool>);

impl std::fmt::Display for TestPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "test pool ({} reserved)", self.0.reserved())
    }
}

impl MemoryPool for TestPool {
    fn name(&self) -> &str {
        "test"
    }
    fn register(&self, c: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.0.register(c)
    }
    fn unregister(&self, c: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.0.unregister(c)
    }
    fn grow(&self, r: &MemoryReservation, n: usize) {
        self.0.grow(r, n)
    }
    fn shrink(&self, r: &MemoryReservation, n: usize) {
        self.0.shrink(r, n)
    }
    fn try_grow(&self, r: &MemoryReservation, n: usize) -> datafusion::error::Result<()> {
        if n == 0 {
            return Ok(()); // as LeasePool: asking for nothing is never refused
        }
        if r.consumer().name().starts_with("RepartitionExec") {
            self.0.grow(r, n);
            return Ok(());
        }
        // As LeasePool: a fifth of the pool is kept for consumers that cannot spill.
        if r.consumer().can_spill() && self.0.reserved() + n > self.limit() / 5 * 4 {
            let why = format!("{} may not spill past four fifths of the test pool", r.consumer().name());
            return Err(datafusion::error::DataFusionError::ResourcesExhausted(why));
        }
        self.0.try_grow(r, n)
    }
    fn reserved(&self) -> usize {
        self.0.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.0.memory_limit()
    }
}

impl TestPool {
    fn limit(&self) -> usize {
        match self.0.memory_limit() {
            MemoryLimit::Finite(n) => n,
            _ => usize::MAX,
        }
    }
}

/// A session; `pool_bytes = Some(n)` bounds it to `n` bytes and installs the grace join.
fn session(
    pool_bytes: Option<usize>,
    partitions: usize,
    collect_left: bool,
    spill: &std::path::Path,
) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(partitions).with_batch_size(4096);
    // A sort's merge reserves this up front; DataFusion's 10MiB default exceeds these pools.
    config.options_mut().execution.sort_spill_reservation_bytes = 1 << 20;
    if !collect_left {
        // Never collect the build side into one partition: every join is Partitioned.
        config.options_mut().optimizer.hash_join_single_partition_threshold = 0;
        config.options_mut().optimizer.hash_join_single_partition_threshold_rows = 0;
    } else {
        config.options_mut().optimizer.hash_join_single_partition_threshold = usize::MAX;
        config.options_mut().optimizer.hash_join_single_partition_threshold_rows = usize::MAX;
    }
    let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(
        DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill.to_path_buf()])),
    );
    if let Some(bytes) = pool_bytes {
        runtime = runtime.with_memory_pool(Arc::new(TestPool(TrackConsumersPool::new(
            GreedyMemoryPool::new(bytes),
            std::num::NonZeroUsize::new(6).unwrap(),
        ))));
    }
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.build_arc().unwrap())
        .with_default_features();
    if let Some(bytes) = pool_bytes {
        state = state
            .with_physical_optimizer_rule(Arc::new(GraceJoinRule::new(GraceOptions::default())))
            .with_physical_optimizer_rule(Arc::new(SortedAggregateRule))
            .with_physical_optimizer_rule(Arc::new(SpillingSortRule::new(bytes as u64)))
            .with_physical_optimizer_rule(Arc::new(WindowGuardRule));
    }
    SessionContext::new_with_state(state.build())
}

/// Runs `sql` and returns its rows as sorted text lines, plus the join reports.
async fn run(ctx: &SessionContext, sql: &str) -> (Vec<String>, Vec<JoinReport>) {
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let plan: Arc<dyn ExecutionPlan> = df.create_physical_plan().await.unwrap();
    let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    let mut lines: Vec<String> = text.lines().filter(|l| l.starts_with('|')).skip(1).map(String::from).collect();
    lines.sort();
    (lines, join_reports(&plan))
}

/// The aggregate we compare: enough to catch a lost, duplicated or mispaired row.
fn summary(select: &str, from: &str) -> String {
    format!("SELECT count(*), {select} FROM {from}")
}

const JOINS: &[(&str, &str)] = &[
    ("INNER JOIN", "count(l.k), sum(l.v), sum(r.v), sum(l.v * 1009 + r.v)"),
    ("LEFT JOIN", "count(l.k), count(r.k), sum(l.v), sum(r.v), sum(l.v * 1009 + coalesce(r.v, 7))"),
    ("RIGHT JOIN", "count(l.k), count(r.k), sum(l.v), sum(r.v), sum(coalesce(l.v, 7) * 1009 + r.v)"),
    ("FULL JOIN", "count(l.k), count(r.k), sum(l.v), sum(r.v), sum(coalesce(l.v, 7) * 1009 + coalesce(r.v, 3))"),
    ("LEFT SEMI JOIN", "count(l.k), sum(l.v), sum(l.v * l.v)"),
    ("LEFT ANTI JOIN", "count(l.k), sum(l.v), sum(l.v * l.v)"),
    ("RIGHT SEMI JOIN", "count(r.k), sum(r.v), sum(r.v * r.v)"),
    ("RIGHT ANTI JOIN", "count(r.k), sum(r.v), sum(r.v * r.v)"),
];

/// Every join type over `l` and `r` (with `on`), bounded vs unbounded; returns how many joins
/// went out of core in the bounded runs.
async fn compare_all(l: (usize, Keys), r: (usize, Keys), on: &str, pool: usize, collect_left: bool) -> usize {
    compare_all_with(l, r, on, pool, collect_left, true).await
}

/// [`compare_all`]; `reorder = false` keeps `l` as the build side whatever the sizes.
async fn compare_all_with(
    l: (usize, Keys),
    r: (usize, Keys),
    on: &str,
    pool: usize,
    collect_left: bool,
    reorder: bool,
) -> usize {
    let spill = tempfile::tempdir().unwrap();
    let reference = session(None, 2, collect_left, spill.path());
    let bounded = session(Some(pool), 2, collect_left, spill.path());
    if !reorder {
        for ctx in [&reference, &bounded] {
            ctx.sql("SET datafusion.optimizer.join_reordering = false").await.unwrap().collect().await.unwrap();
        }
    }
    for ctx in [&reference, &bounded] {
        ctx.register_table("l", Arc::new(table(l.0, l.1, 1))).unwrap();
        ctx.register_table("r", Arc::new(table(r.0, r.1, 2))).unwrap();
    }
    let mut out_of_core = 0;
    for (join, select) in JOINS {
        let sql = summary(select, &format!("l {join} r ON {on}"));
        let (want, _) = run(&reference, &sql).await;
        let (got, reports) = run(&bounded, &sql).await;
        assert_eq!(got, want, "{sql} with {l:?} / {r:?}, collect_left={collect_left}: {reports:?}");
        assert!(!reports.is_empty(), "{sql}: no grace join in the plan");
        out_of_core += reports.iter().filter(|r| r.out_of_core_partitions > 0).count();
    }
    // Nothing is left in the spill directory once the queries are done.
    let left: Vec<_> = walk(spill.path());
    assert!(left.is_empty(), "spill files left behind: {left:?}");
    out_of_core
}

/// Spill files left in `dir` once a query has finished or failed. After a failure the other
/// partitions' tasks are cancelled and drop their files asynchronously: allow them a moment.
fn left_behind(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    for _ in 0..50 {
        if walk(dir).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    walk(dir)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_keys_every_join_type_partitioned_and_collect_left() {
    for collect_left in [false, true] {
        let n = compare_all(
            (200_000, Keys::Random(50_000)),
            (150_000, Keys::Random(60_000)),
            "l.k = r.k",
            4 * MIB,
            collect_left,
        )
        .await;
        assert_eq!(n, JOINS.len(), "every join went out of core (collect_left={collect_left})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_keys_every_join_type() {
    for collect_left in [false, true] {
        let n = compare_all(
            (200_000, Keys::WithNulls(50_000)),
            (150_000, Keys::WithNulls(50_000)),
            "l.k = r.k",
            4 * MIB,
            collect_left,
        )
        .await;
        assert!(n > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_equals_null_keys_every_join_type() {
    // IS NOT DISTINCT FROM: NULL keys match each other, so they must all meet in one bucket.
    let n = compare_all(
        (200_000, Keys::RareNulls(50_000)),
        (100_000, Keys::RareNulls(50_000)),
        "l.k IS NOT DISTINCT FROM r.k",
        4 * MIB,
        false,
    )
    .await;
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_keys_and_a_join_filter() {
    // Half of each side has key 0: that bucket cannot be split and is joined in chunks.
    let n = compare_all_with(
        (120_000, Keys::Skewed(40_000)),
        (200, Keys::Skewed(100)),
        "l.k = r.k AND l.v < r.v + 500",
        2 * MIB,
        false,
        false,
    )
    .await;
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_equal_keys_are_joined_in_chunks() {
    // The large side stays the build side (DataFusion would otherwise build on the 20 rows).
    let n = compare_all_with((150_000, Keys::AllEqual), (20, Keys::AllEqual), "l.k = r.k", 2 * MIB, false, false).await;
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_and_multi_column_keys() {
    let n = compare_all(
        (200_000, Keys::WithNulls(30_000)),
        (150_000, Keys::Random(30_000)),
        "l.s = r.s AND l.k = r.k",
        4 * MIB,
        false,
    )
    .await;
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_side_that_fits_stays_in_memory() {
    let spill = tempfile::tempdir().unwrap();
    let ctx = session(Some(64 * MIB), 2, false, spill.path());
    ctx.register_table("l", Arc::new(table(20_000, Keys::Random(5_000), 1))).unwrap();
    ctx.register_table("r", Arc::new(table(20_000, Keys::Random(5_000), 2))).unwrap();
    let (_, reports) = run(&ctx, "SELECT count(*) FROM l JOIN r ON l.k = r.k").await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].out_of_core_partitions, reports[0].buckets, reports[0].spilled_bytes),
        (0, 0, 0),
        "{reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_functions_over_whole_partitions_run_group_batch_by_group_batch() {
    let spill = tempfile::tempdir().unwrap();
    let reference = session(None, 2, false, spill.path());
    let bounded = session(Some(64 * MIB), 2, false, spill.path());
    for ctx in [&reference, &bounded] {
        ctx.register_table("l", Arc::new(table(1_600_000, Keys::WithNulls(4_000), 1))).unwrap();
    }
    // Aggregates over whole groups: accumulated as the rows stream by.
    let sql = "SELECT count(*), sum(w), sum(c * v), count(m) FROM (SELECT v, sum(v) OVER (PARTITION BY k) AS w, \
               count(*) OVER (PARTITION BY k) AS c, max(s) OVER (PARTITION BY k) AS m FROM l)";
    let (want, _) = run(&reference, sql).await;
    let (got, _) = run(&bounded, sql).await;
    assert_eq!(got, want, "{sql}");
    // A function that needs its whole group (cume_dist): handed to DataFusion's window in
    // batches of complete groups.
    let sql = "SELECT count(*), sum(CAST(c * 1000000 AS BIGINT)) FROM \
               (SELECT cume_dist() OVER (PARTITION BY k ORDER BY v) AS c FROM l)";
    let (want, _) = run(&reference, sql).await;
    let (got, plan) = run_ordered(&bounded, sql).await;
    assert_eq!(got, want, "{sql}");
    let pieces = metric(&plan, "WindowGuardExec", "group_batches");
    assert!(pieces > 2, "{pieces} pieces");

    // Without PARTITION BY the input is one group, larger than the pool: aggregates over it keep
    // the rows on disk and stream them back with the values.
    let tight = session(Some(8 * MIB), 2, false, spill.path());
    tight.register_table("l", Arc::new(table(1_600_000, Keys::WithNulls(4_000), 1))).unwrap();
    let bounded = tight;
    let sql = "SELECT k, s, v, sum(v) OVER () AS t, v * 1000 / max(v) OVER () FROM l";
    let (want, _) = run(&reference, sql).await;
    let (got, _) = run(&bounded, sql).await;
    assert!(got == want, "{sql}: rows differ");
    let (_, plan) = run_ordered(&bounded, sql).await;
    assert!(metric(&plan, "WindowGuardExec", "spill_count") > 0, "the group went to disk");
    // A window function that needs the whole group in memory (cume_dist over one group larger
    // than the pool) fails and says why.
    let e = bounded
        .sql("SELECT k, s, v, cume_dist() OVER (ORDER BY v) FROM l")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("without PARTITION BY") && e.contains("Resources exhausted"), "{e}");
    assert!(left_behind(spill.path()).is_empty(), "spill files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_and_nested_loop_joins_go_block_by_block() {
    let spill = tempfile::tempdir().unwrap();
    let reference = session(None, 2, false, spill.path());
    let bounded = session(Some(4 * MIB), 2, false, spill.path());
    for ctx in [&reference, &bounded] {
        ctx.sql("SET datafusion.optimizer.join_reordering = false").await.unwrap().collect().await.unwrap();
        ctx.register_table("l", Arc::new(table(200_000, Keys::WithNulls(1_000), 1))).unwrap();
        ctx.register_table("r", Arc::new(table(60, Keys::Random(1_000), 2))).unwrap();
    }
    for sql in [
        "SELECT count(*), sum(l.v * 1009 + r.v), count(l.k) FROM l CROSS JOIN r",
        "SELECT count(*), sum(l.v * 1009 + r.v), count(l.k) FROM l JOIN r ON l.v < r.v",
    ] {
        let (want, _) = run(&reference, sql).await;
        let (got, reports) = run(&bounded, sql).await;
        assert_eq!(got, want, "{sql}: {reports:?}");
        assert!(reports.iter().any(|r| r.out_of_core_partitions > 0 && r.chunks > 1), "{sql}: {reports:?}");
    }
    assert!(left_behind(spill.path()).is_empty(), "spill files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungrouped_aggregate_is_charged_to_the_pool() {
    // DataFusion's ungrouped aggregate reserves its accumulators: too large, it fails cleanly
    // (naming itself) instead of growing unseen.
    let spill = tempfile::tempdir().unwrap();
    let bounded = session(Some(4 * MIB), 2, false, spill.path());
    bounded.register_table("l", Arc::new(table(400_000, Keys::Random(1_000), 1))).unwrap();
    let e = bounded.sql("SELECT array_agg(s) FROM l").await.unwrap().collect().await.unwrap_err().to_string();
    assert!(e.contains("Resources exhausted") && e.contains("AggregateStream"), "{e}");
}

/// Runs `sql` and returns its rows as text lines in the order they came, with the plan.
async fn run_ordered(ctx: &SessionContext, sql: &str) -> (Vec<String>, Arc<dyn ExecutionPlan>) {
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let plan: Arc<dyn ExecutionPlan> = df.create_physical_plan().await.unwrap();
    let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    (text.lines().filter(|l| l.starts_with('|')).skip(1).map(String::from).collect(), plan)
}

/// The sum of metric `name` over every operator called `op` in `plan`.
fn metric(plan: &Arc<dyn ExecutionPlan>, op: &str, name: &str) -> usize {
    let mut total = 0;
    let mut stack = vec![plan.clone()];
    while let Some(p) = stack.pop() {
        if p.name() == op {
            let m = p.metrics();
            total += match name {
                "spill_count" => m.and_then(|m| m.spill_count()).unwrap_or(0),
                _ => m.and_then(|m| m.sum_by_name(name)).map(|v| v.as_usize()).unwrap_or(0),
            };
        }
        stack.extend(p.children().into_iter().cloned());
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorts_of_every_shape_spill_and_keep_their_order() {
    let spill = tempfile::tempdir().unwrap();
    let reference = session(None, 2, false, spill.path());
    let bounded = session(Some(4 * MIB), 2, false, spill.path());
    for ctx in [&reference, &bounded] {
        ctx.register_table("l", Arc::new(table(600_000, Keys::WithNulls(50_000), 1))).unwrap();
    }
    for (sql, spills) in [
        // A string key, NULLs first, over two partitions merged: runs on disk, merged in passes.
        ("SELECT s, k, v FROM l ORDER BY s DESC NULLS FIRST, v, k", true),
        // A TopK too large for its share: an external sort cut to the limit.
        ("SELECT s, k, v FROM l ORDER BY k NULLS LAST, v, s LIMIT 20 OFFSET 300000", true),
        // A small TopK stays DataFusion's.
        ("SELECT s, k, v FROM l ORDER BY v DESC, k, s LIMIT 10", false),
        // A window without PARTITION BY over a sort by a string.
        ("SELECT s, v, row_number() OVER (ORDER BY s, v, k) FROM l ORDER BY s, v, k", true),
        // Wide rows: each batch of a run holds few of them.
        ("SELECT concat(s, repeat('x', 400), s) AS w, v FROM l ORDER BY w, v LIMIT 100 OFFSET 100000", true),
    ] {
        let (want, _) = run_ordered(&reference, sql).await;
        let (got, plan) = run_ordered(&bounded, sql).await;
        assert_eq!(got.len(), want.len(), "{sql}");
        assert!(got == want, "{sql}: rows differ");
        let spilled = metric(&plan, "SpillingSortExec", "spill_count");
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(false)
            .to_string();
        assert_eq!(spilled > 0, spills, "{sql}: {spilled} runs spilled\n{shown}");
    }
    assert!(left_behind(spill.path()).is_empty(), "spill files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_whose_state_grows_stream_group_by_group() {
    let spill = tempfile::tempdir().unwrap();
    let reference = session(None, 2, false, spill.path());
    let bounded = session(Some(4 * MIB), 2, false, spill.path());
    for ctx in [&reference, &bounded] {
        // Many small groups (a NULL key would make one group of a fifth of the rows).
        ctx.register_table("l", Arc::new(table(400_000, Keys::Random(20_000), 1))).unwrap();
    }
    for sql in [
        "SELECT k, median(v), count(DISTINCT v), string_agg(s, ',' ORDER BY v, s) FROM l GROUP BY k",
        "SELECT v, array_agg(k ORDER BY k), count(DISTINCT s) FROM l GROUP BY v",
        "SELECT k, s, percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM l GROUP BY k, s HAVING count(*) > 1",
    ] {
        let (want, _) = run(&reference, sql).await;
        let (got, _) = run(&bounded, sql).await;
        assert_eq!(got.len(), want.len(), "{sql}");
        assert!(got == want, "{sql}: rows differ");
        let plan = bounded.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string();
        assert!(shown.contains("SpillingSortExec") && shown.contains("ordering_mode=Sorted"), "{sql}:\n{shown}");
    }
    assert!(left_behind(spill.path()).is_empty(), "spill files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_any_merge_fails_naming_the_sort() {
    let spill = tempfile::tempdir().unwrap();
    let bounded = session(Some(4 * MIB), 1, false, spill.path());
    bounded.register_table("l", Arc::new(table(20, Keys::Random(10), 1))).unwrap();
    let e = bounded
        .sql("SELECT repeat(s, 400000) AS w FROM l ORDER BY w")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("SpillingSort[0]") && e.contains("one row takes") && e.contains("the lease is 4.0MiB"), "{e}");
    assert!(left_behind(spill.path()).is_empty(), "spill files left behind");
}
