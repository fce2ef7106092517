//! A transaction passes a view in pieces, each reserved before it is built: a join whose output
//! is 1,000× its input, under an aggregate, completes inside a lease far smaller than that
//! output, with the right answer, and gives back everything it reserved. A view's contents are
//! read for its sinks a reserved chunk at a time, never copied whole.

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use spillway_governor::jemalloc;
use spillway_views::{Deltas, View, ViewError, ZSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: usize = 1 << 20;
/// Rows of `a` on the hot key: each row inserted into `b` on that key meets all of them.
const HOT: i64 = 1_000;
/// Rows inserted into `b` on the hot key in one transaction: 5,000,000 join pairs.
const INSERTED: i64 = 5_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Int64, false)]))
}

fn rows(keys: Vec<i64>, values: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(keys)), Arc::new(Int64Array::from(values))]).unwrap()
}

/// `a`: HOT rows on key 0 and HOT on keys 1..10; `b`: one row per key 0..10.
fn tables(pool: Arc<dyn MemoryPool>) -> (SessionContext, RecordBatch, RecordBatch) {
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(pool).build_arc().unwrap();
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(1), runtime);
    let a = rows((0..2 * HOT).map(|i| if i < HOT { 0 } else { 1 + i % 9 }).collect(), (0..2 * HOT).collect());
    let b = rows((0..10).collect(), (0..10).map(|i| i * 100).collect());
    for (name, batch) in [("a", &a), ("b", &b)] {
        let t = MemTable::try_new(schema(), vec![vec![batch.clone()]]).unwrap();
        ctx.register_table(name, Arc::new(t)).unwrap();
    }
    (ctx, a, b)
}

const SQL: &str = "SELECT b.k, count(*) AS n, sum(a.v + b.v) AS total FROM a JOIN b ON a.k = b.k GROUP BY b.k";

/// The insert: INSERTED rows into `b` on the hot key.
fn insert() -> RecordBatch {
    rows(vec![0; INSERTED as usize], (0..INSERTED).collect())
}

/// Peak bytes jemalloc had allocated while `f` ran, above what it had before.
fn peak_while<T>(f: impl FnOnce() -> T) -> (T, usize) {
    jemalloc::flush_thread_cache();
    let base = jemalloc::read().unwrap().allocated;
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = jemalloc::read() {
                    peak.fetch_max(s.allocated, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (out, peak.load(Ordering::Relaxed).saturating_sub(base) as usize)
}

#[tokio::test(flavor = "current_thread")]
async fn a_join_fanning_out_a_thousand_times_under_an_aggregate_stays_inside_its_lease() {
    assert!(jemalloc::is_active());
    let lease = 32 * MIB;
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(lease));
    let (ctx, a, b) = tables(pool.clone());
    let mut v = View::plan(&ctx, "fanout", SQL).await.unwrap();
    v.populate(&ctx).await.unwrap();
    let mut deltas = Deltas::new();
    deltas.insert("b".into(), ZSet::uniform(insert(), 1));
    let (out, peak) = peak_while(|| v.apply(&deltas));
    let out = out.unwrap();
    eprintln!("5,000,000 pairs: peak {:.1}MiB allocated above the start", peak as f64 / MIB as f64);
    // 5,000,000 pairs of two 16-byte rows decoded at once would be ~160MiB, twice that as
    // arrow-row boxes: the pieces keep it to a few MiB.
    assert!(peak < lease, "peak {}MiB above the {}MiB lease", peak / MIB, lease / MIB);
    assert_eq!(v.in_flight(), 0, "everything reserved in flight is given back");
    assert_eq!(pool.reserved(), 0, "nothing stays reserved after the transaction");

    // The answer: a recompute over the tables as they are now.
    let fresh = SessionContext::new();
    let b2 = arrow::compute::concat_batches(&schema(), &[b, insert()]).unwrap();
    for (name, batch) in [("a", a), ("b", b2)] {
        fresh.register_table(name, Arc::new(MemTable::try_new(schema(), vec![vec![batch]]).unwrap())).unwrap();
    }
    let want = fresh.sql(&format!("{SQL} ORDER BY 1")).await.unwrap().collect().await.unwrap();
    let got = v.contents().unwrap().batch;
    let sort = |b: &RecordBatch| {
        let idx = arrow::compute::sort_to_indices(b.column(0), None, None).unwrap();
        arrow::compute::take_record_batch(b, &idx).unwrap()
    };
    let want = arrow::compute::concat_batches(&want[0].schema(), &want).unwrap();
    let got = sort(&got);
    for c in 0..3 {
        assert_eq!(
            arrow::compute::cast(got.column(c), &DataType::Int64).unwrap().as_ref(),
            arrow::compute::cast(want.column(c), &DataType::Int64).unwrap().as_ref(),
            "column {c}"
        );
    }
    let n0 = got.column(1).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    assert_eq!(n0, HOT * (INSERTED + 1), "key 0 counts every pair");
    assert_eq!(out.len(), 2, "the one group touched: its old row out, its new row in");
}

#[tokio::test(flavor = "current_thread")]
async fn a_piece_the_lease_cannot_hold_is_refused_before_it_is_built() {
    // Room for the state and little more: the first piece of pairs is refused, by name.
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(256 * 1024));
    let (ctx, _, _) = tables(pool.clone());
    let mut v = View::plan(&ctx, "fanout", SQL).await.unwrap();
    v.populate(&ctx).await.unwrap();
    let mut deltas = Deltas::new();
    deltas.insert("b".into(), ZSet::uniform(insert(), 1));
    let (out, peak) = peak_while(|| v.apply(&deltas));
    match out {
        Err(e @ ViewError::InFlight { .. }) => {
            let text = e.to_string();
            assert!(text.contains("view fanout") && text.contains("in flight"), "{text}");
        }
        other => panic!("expected a refusal in flight, got {other:?}"),
    }
    assert!(peak < 8 * MIB, "refused before it was built: peak {}KiB", peak / 1024);
    assert_eq!(v.in_flight(), 0, "a refusal gives back what was reserved");
}

/// A table of `n` rows `(i % 1000, i)`, registered as `t` on a context whose pool is `pool`.
fn big_table(pool: Arc<dyn MemoryPool>, n: i64) -> SessionContext {
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(pool).build_arc().unwrap();
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(1), runtime);
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(65_536)
        .map(|s| {
            let e = (s + 65_536).min(n);
            rows((s..e).map(|i| i % 1000).collect(), (s..e).collect())
        })
        .collect();
    ctx.register_table("t", Arc::new(MemTable::try_new(schema(), vec![batches]).unwrap())).unwrap();
    ctx
}

#[tokio::test(flavor = "current_thread")]
async fn contents_are_read_a_reserved_chunk_at_a_time_never_copied_whole() {
    assert!(jemalloc::is_active());
    // 1,000,000 rows of two Int64 columns: ~16MiB decoded at once. The pool (the views' lease
    // beside their state, which the host reserves) has 2MiB for reading them.
    const N: i64 = 1_000_000;
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(2 * MIB));
    let ctx = big_table(pool.clone(), N);
    let mut v = View::plan(&ctx, "copy", "SELECT k, v FROM t WHERE v >= 0").await.unwrap();
    v.populate(&ctx).await.unwrap();
    assert_eq!(v.rows(), N as u64);

    // Whole: refused before it is decoded, naming what it was for.
    match v.contents() {
        Err(e @ ViewError::InFlight { .. }) => {
            let text = e.to_string();
            assert!(text.contains("view copy") && text.contains("its contents, being read"), "{text}");
        }
        Ok(h) => panic!("{} rows read whole inside a 2MiB pool", h.batch.num_rows()),
        Err(e) => panic!("expected a refusal, got {e}"),
    }
    assert_eq!(pool.reserved(), 0, "a refusal gives back what was reserved");

    // A chunk at a time: every row, each once, inside the pool; the peak allocated is one
    // chunk's, not the whole copy's.
    let most = Arc::new(AtomicU64::new(0));
    let ((count, sum), peak) = peak_while(|| {
        let (mut count, mut sum) = (0i64, 0i64);
        for chunk in v.contents_chunks(8192) {
            let chunk = chunk.unwrap();
            most.fetch_max(pool.reserved() as u64, Ordering::Relaxed);
            assert!(chunk.num_rows() <= 8192);
            let values = chunk.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            count += chunk.num_rows() as i64;
            sum += values.iter().map(|x| x.unwrap()).sum::<i64>();
        }
        (count, sum)
    });
    assert_eq!((count, sum), (N, N * (N - 1) / 2), "every row once");
    let most = most.load(Ordering::Relaxed) as usize;
    eprintln!("chunks: at most {}KiB reserved, peak {}KiB allocated", most / 1024, peak / 1024);
    assert!(most > 0 && most < MIB, "a chunk reserved while it is out: {most} bytes");
    assert!(peak < 4 * MIB, "one chunk at a time, not a copy of 16MiB: peak {}KiB", peak / 1024);
    assert_eq!(pool.reserved(), 0, "the last chunk's reservation is given back");

    // A view in an order is read in it, as one chunk (its order needs every row).
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(64 * MIB));
    let ctx = big_table(pool.clone(), 10_000);
    let mut v = View::plan(&ctx, "ordered", "SELECT k, v FROM t ORDER BY k DESC, v").await.unwrap();
    v.populate(&ctx).await.unwrap();
    let chunks: Vec<RecordBatch> = v.contents_chunks(100).map(|c| c.unwrap()).collect();
    assert_eq!(chunks.len(), 1);
    let keys = chunks[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert!(keys.values().windows(2).all(|w| w[0] >= w[1]), "in the view's order");
    assert_eq!(pool.reserved(), 0, "given back once the chunks are dropped");
}
