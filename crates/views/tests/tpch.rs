//! All 22 TPC-H queries as views over TPC-H SF0.01, maintained through a refresh-style change
//! stream (new orders with their lineitems, old ones deleted, quantities and balances updated):
//! after every batch each view equals DataFusion's answer over the current tables.

mod common;

use arrow::array::RecordBatch;
use common::multiset;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use spillway_views::{changes, Deltas, RowCodec, View, ZSet};
use std::collections::HashMap;
use std::sync::Arc;

const SF: f64 = 0.01;
const CHANGED: [&str; 4] = ["orders", "lineitem", "customer", "partsupp"];

/// A table's current rows with their counts.
struct Current {
    codec: RowCodec,
    rows: HashMap<Box<[u8]>, i64>,
}

impl Current {
    fn apply(&mut self, z: &ZSet) {
        let rows = self.codec.encode_batch(&z.batch).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let c = self.rows.entry(r.as_ref().into()).or_default();
            *c += z.weights[i];
            assert!(*c >= 0, "the change stream deleted a row that is not there");
            if *c == 0 {
                self.rows.remove(r.as_ref());
            }
        }
    }

    fn batch(&self) -> RecordBatch {
        let rows: Vec<&[u8]> =
            self.rows.iter().flat_map(|(r, c)| std::iter::repeat_n(r.as_ref(), *c as usize)).collect();
        self.codec.decode(rows).unwrap()
    }
}

async fn oracle(dir: &std::path::Path, current: &HashMap<&str, Current>) -> SessionContext {
    let ctx = SessionContext::new();
    spillway_engine::tables::register_data_dir(&ctx, dir).await.unwrap();
    for (name, c) in current {
        ctx.deregister_table(*name).unwrap();
        let schema = spillway_engine::tpch::schema(name).unwrap();
        let batch = ZSet::uniform(c.batch(), 1).with_schema(schema.clone()).unwrap().batch;
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap();
        ctx.register_table(*name, Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())).unwrap();
    }
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_22_tpch_queries_as_views_equal_recomputing_them_after_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    spillway_engine::tpch::generate(SF, dir.path(), 2, &|_| {}).unwrap();
    let ctx = SessionContext::new();
    spillway_engine::tables::register_data_dir(&ctx, dir.path()).await.unwrap();

    // Each query twice: as is, and told which tables never change (those the batches leave
    // alone), where joins keep no state for the side opposite them.
    let unchanging: std::collections::BTreeSet<String> =
        ["part", "supplier", "nation", "region"].into_iter().map(String::from).collect();
    let mut views = Vec::new();
    let (mut full, mut lean) = (0, 0);
    for told in [false, true] {
        for q in 1..=22 {
            let sql = spillway_engine::tpch::query(q, SF).unwrap();
            let mut v = View::plan(&ctx, &format!("q{q}"), &sql).await.unwrap_or_else(|e| panic!("Q{q}: {e}"));
            if told {
                v.unchanging(&unchanging).unwrap();
            }
            v.populate(&ctx).await.unwrap_or_else(|e| panic!("Q{q}: {e}"));
            *(if told { &mut lean } else { &mut full }) += v.state_bytes();
            views.push((q, sql, v));
        }
    }
    println!("state: {full} bytes; told what never changes: {lean} bytes");
    assert!(lean * 10 < full * 8, "joins beside unchanging tables keep less: {lean} of {full} bytes");
    let mut current: HashMap<&str, Current> = HashMap::new();
    for t in CHANGED {
        let schema = spillway_engine::tpch::schema(t).unwrap();
        let mut c = Current { codec: RowCodec::new(schema.clone()).unwrap(), rows: HashMap::new() };
        for b in ctx.sql(&format!("SELECT * FROM {t}")).await.unwrap().collect().await.unwrap() {
            c.apply(&ZSet::uniform(b, 1).with_schema(schema.clone()).unwrap());
        }
        current.insert(t, c);
    }

    let mut ever = std::collections::BTreeSet::new();
    for batch in 0..4 {
        let mut deltas = Deltas::new();
        for (table, b) in spillway_engine::tpch::refresh_changes(&ctx, 500, batch).await.unwrap() {
            let schema = spillway_engine::tpch::schema(&table).unwrap();
            let z = changes::unkeyed(&table, &b, &schema).unwrap();
            let all = match deltas.remove(&table) {
                Some(prev) => ZSet::concat(z.schema(), vec![prev, z]).unwrap(),
                None => z,
            };
            deltas.insert(table, all);
        }
        for (table, z) in &deltas {
            current.get_mut(table.as_str()).unwrap().apply(z);
        }
        let now = oracle(dir.path(), &current).await;
        let mut changed = Vec::new();
        for (q, sql, v) in views.iter_mut() {
            let out = v.apply(&deltas).unwrap_or_else(|e| panic!("batch {batch}: Q{q}: {e}"));
            if !out.is_empty() {
                changed.push(*q);
                ever.insert(*q);
            }
            let expected = now.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(multiset(&[v.contents().unwrap().batch]), multiset(&expected), "batch {batch}: Q{q}");
            assert_eq!(v.in_flight(), 0, "Q{q}: nothing stays reserved in flight between transactions");
        }
        println!("batch {batch}: views that changed: {changed:?}");
    }
    // At SF0.01 with 500-order batches, Q2, Q8, Q11, Q16, Q17, Q18, Q19 and Q20 select too few
    // rows for these changes to alter their answers (they are still compared every batch, and
    // their operators' state still absorbs every change); 14 views change.
    assert!(ever.len() >= 14, "only {ever:?} of the 22 views ever changed: the stream is too weak to test them");
}
