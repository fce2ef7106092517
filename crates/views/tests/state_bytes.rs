//! The bytes each view charges for its state against what jemalloc says it allocated for it:
//! charged bytes must be the real bytes (within 25%), or a budget kept on charges is not kept.

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use spillway_governor::jemalloc;
use spillway_views::View;
use std::sync::Arc;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ROWS: i64 = 200_000;

fn tables() -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (0..ROWS).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from(ids.iter().map(|i| i % 50_000).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(ids.iter().map(|i| (i * 7919) % 1000).collect::<Vec<_>>())),
            Arc::new(StringArray::from(ids.iter().map(|i| format!("name-{i:08}")).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    for t in ["t", "u"] {
        let table = MemTable::try_new(schema.clone(), vec![vec![batch.clone()]]).unwrap();
        ctx.register_table(t, Arc::new(table)).unwrap();
    }
    ctx
}

fn allocated() -> u64 {
    jemalloc::flush_thread_cache();
    jemalloc::purge_all_arenas();
    jemalloc::read().unwrap().allocated
}

#[tokio::test(flavor = "current_thread")]
async fn each_views_charged_state_is_within_a_quarter_of_what_it_allocated() {
    assert!(jemalloc::is_active());
    let ctx = tables();
    let shapes = [
        ("join", "SELECT a.id, a.s, b.v FROM t a JOIN u b ON a.id = b.id"),
        ("aggregate", "SELECT k, count(*) AS n, sum(v) AS total FROM t GROUP BY k"),
        ("min/max", "SELECT k, min(v) AS lo, max(s) AS hi FROM t GROUP BY k"),
        ("top-n", "SELECT id, v, s FROM t ORDER BY v DESC, id LIMIT 10"),
        ("filter", "SELECT id, k, s FROM t WHERE v < 500"),
        ("distinct", "SELECT DISTINCT k, v FROM t"),
        ("anti (a count per key of u)", "SELECT id, s FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = t.id)"),
    ];
    let mut report = Vec::new();
    for (name, sql) in shapes {
        let before = allocated();
        let mut v = View::plan(&ctx, name, sql).await.unwrap();
        v.populate(&ctx).await.unwrap();
        let real = allocated().saturating_sub(before);
        let charged = v.state_bytes() as u64;
        report.push((name, charged, real, real as f64 / charged.max(1) as f64));
        drop(v);
    }
    let text: Vec<String> = report
        .iter()
        .map(|(n, c, r, x)| {
            format!("{n}: charged {:.1}MiB, allocated {:.1}MiB ({x:.2}x)", *c as f64 / 1048576.0, *r as f64 / 1048576.0)
        })
        .collect();
    eprintln!("{}", text.join("\n"));
    for (name, _, _, ratio) in &report {
        assert!((0.75..=1.25).contains(ratio), "{name}: charged state is not the real state\n{}", text.join("\n"));
    }
}

/// An aggregate populated from many batches that each touch every group writes each group's
/// state again per batch, leaving the old bytes dead in its arena; the arena is rewritten as the
/// population goes, so the state ends near its live size, not one copy per batch.
#[tokio::test(flavor = "current_thread")]
async fn an_aggregate_populated_batch_by_batch_holds_about_its_live_groups() {
    let schema =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Int64, false)]));
    let (groups, batches) = (10_000i64, 40);
    let batch = |b: i64| {
        let k: Vec<i64> = (0..groups).collect();
        let v: Vec<i64> = k.iter().map(|k| k * 31 + b).collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(k)), Arc::new(Int64Array::from(v))])
            .unwrap()
    };
    let all: Vec<RecordBatch> = (0..batches).map(batch).collect();
    let sql = "SELECT k, count(*) AS n, sum(v) AS total FROM t GROUP BY k";
    let mut state = Vec::new();
    // One row per group (nothing rewritten: the live size), then every group in every batch.
    for parts in [vec![batch(0)], all] {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let table = MemTable::try_new(schema.clone(), vec![parts]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let mut v = View::plan(&ctx, "per_k", sql).await.unwrap();
        v.populate(&ctx).await.unwrap();
        state.push(v.state_bytes());
    }
    let (one, many) = (state[0], state[1]);
    eprintln!("one row per group: {one} bytes; {batches} rows per group in {batches} batches: {many} bytes");
    assert!(many <= one * 2, "populated from {batches} batches it holds {many} bytes, its live groups {one}");
}
