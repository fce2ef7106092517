//! A transaction passes a view in pieces, each reserved before it is built: a join whose output
//! is 1,000× its input, under an aggregate, completes inside a lease far smaller than that
//! output, with the right answer, and gives back everything it reserved.

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
    let got = v.contents().unwrap();
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
