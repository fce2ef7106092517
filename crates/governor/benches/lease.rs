//! Cost of borrowing from the governor: uncontended lease acquire + release, with and without
//! the jemalloc purge that a large lease's release triggers, and one `try_grow`/`shrink` pair of
//! the lease pool. Run: `cargo bench -p spillway-governor --bench lease`.

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool};
use spillway_governor::{Governor, GovernorConfig, LeaseRequest, PoolOptions};
use std::sync::Arc;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn bench(c: &mut Criterion) {
    let gov = Governor::new(GovernorConfig::new(1 << 30)).expect("governor");
    c.bench_function("lease acquire+release 64KiB (no purge)", |b| {
        b.iter(|| {
            let lease = futures::executor::block_on(gov.lease(LeaseRequest::bytes("bench", 64 << 10))).unwrap();
            drop(std::hint::black_box(lease));
        })
    });
    c.bench_function("lease acquire+release 64MiB (with arena purge)", |b| {
        b.iter(|| {
            let lease = futures::executor::block_on(gov.lease(LeaseRequest::bytes("bench", 64 << 20))).unwrap();
            drop(std::hint::black_box(lease));
        })
    });
    let lease = futures::executor::block_on(gov.lease(LeaseRequest::bytes("bench", 256 << 20))).unwrap();
    let pool: Arc<dyn MemoryPool> = lease.into_pool(PoolOptions::default());
    let r = MemoryConsumer::new("Sort[0]").with_can_spill(true).register(&pool);
    c.bench_function("pool try_grow+shrink 8KiB", |b| {
        b.iter(|| {
            r.try_grow(8192).unwrap();
            r.shrink(8192);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
