//! Integration tests of the governor: the lease queue under stress, fairness, cancellation,
//! timeouts, pressure, heavy slots and the DataFusion pool.
//!
//! Index:
//! - `queue_*`: the FIFO lease queue (stress, fairness, cancellation, timeouts).
//! - `pressure_*`, `heavy_*`: admission rules.
//! - `pool_*`: [`LeasePool`] as a DataFusion `MemoryPool`.
//! - `ledger_*`: two governors sharing one machine-wide ledger.

use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool};
use spillway_governor::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: u64 = 1 << 20;

/// A governor whose sampler does not overwrite pressure levels set by the test.
fn governor(budget_mib: u64) -> Governor {
    let mut c = GovernorConfig::new(budget_mib * MIB);
    c.sample_interval = Duration::from_secs(3600);
    c.pressure = PressureThresholds { moderate: 1.4, high: 1.45, critical: 1.5 };
    Governor::new(c).unwrap()
}

/// Small deterministic PRNG so stress runs are reproducible.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_stress_never_overcommits_and_drains() {
    for seed in [1u64, 7, 42, 1234] {
        let gov = governor(100); // 85MiB leasable
        let leasable = gov.leasable();
        let held = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let mut rng = XorShift(seed * 0x9E37_79B9_7F4A_7C15 + 1);
        let mut tasks = Vec::new();
        for i in 0..300 {
            let bytes = (rng.next() % 40 + 1) * MIB;
            let hold_us = rng.next() % 2000;
            let cancel = rng.next().is_multiple_of(5); // a fifth of the requests give up early
            let (gov, held, peak) = (gov.clone(), held.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let fut = gov.lease(LeaseRequest::bytes(format!("t{i}"), bytes));
                let lease = if cancel {
                    match tokio::time::timeout(Duration::from_micros(hold_us), fut).await {
                        Ok(l) => l.unwrap(),
                        Err(_) => return,
                    }
                } else {
                    fut.await.unwrap()
                };
                let now = held.fetch_add(bytes, Ordering::SeqCst) + bytes;
                peak.fetch_max(now, Ordering::SeqCst);
                assert!(now <= leasable, "over-committed: {now} > {leasable}");
                assert!(gov.leased() <= leasable);
                tokio::time::sleep(Duration::from_micros(hold_us)).await;
                held.fetch_sub(bytes, Ordering::SeqCst);
                drop(lease);
            }));
        }
        let all = futures::future::join_all(tasks);
        let results = tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("deadlock: lease tasks did not finish in 60s");
        for r in results {
            r.expect("task panicked");
        }
        assert_eq!(gov.leased(), 0, "cancelled or finished leases must return every byte");
        assert_eq!(gov.queued(), 0);
        assert!(peak.load(Ordering::SeqCst) > leasable / 2, "the stress test should fill the budget");
    }
}

#[tokio::test]
async fn queue_is_fifo_large_request_not_starved_by_small_ones() {
    let gov = governor(100);
    let big_holder = gov.lease(LeaseRequest::bytes("holder", 80 * MIB)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let g = gov.clone();
    let t = tx.clone();
    let large = tokio::spawn(async move {
        let l = g.lease(LeaseRequest::bytes("large", 50 * MIB)).await.unwrap();
        t.send("large").unwrap();
        l
    });
    while gov.queued() < 1 {
        tokio::task::yield_now().await;
    }
    // 5MiB are free, so a small request would fit, but it must queue behind the large one.
    let g = gov.clone();
    let small = tokio::spawn(async move {
        let l = g.lease(LeaseRequest::bytes("small", MIB)).await.unwrap();
        tx.send("small").unwrap();
        l
    });
    while gov.queued() < 2 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(rx.try_recv().is_err(), "nothing may be granted ahead of the queue head");
    drop(big_holder);
    assert_eq!(rx.recv().await, Some("large"));
    assert_eq!(rx.recv().await, Some("small"));
    let (a, b) = (large.await.unwrap(), small.await.unwrap());
    assert_eq!(gov.leased(), 51 * MIB);
    drop((a, b));
    assert_eq!(gov.leased(), 0);
}

#[tokio::test]
async fn queue_cancellation_returns_place_and_unblocks_followers() {
    let gov = governor(100);
    let holder = gov.lease(LeaseRequest::bytes("holder", 60 * MIB)).await.unwrap();
    let g = gov.clone();
    let blocked = tokio::spawn(async move { g.lease(LeaseRequest::bytes("blocked", 50 * MIB)).await });
    while gov.queued() < 1 {
        tokio::task::yield_now().await;
    }
    let g = gov.clone();
    let follower = tokio::spawn(async move { g.lease(LeaseRequest::bytes("follower", 20 * MIB)).await });
    while gov.queued() < 2 {
        tokio::task::yield_now().await;
    }
    // Cancelling the head lets the follower (which fits) through without any release.
    blocked.abort();
    let f = tokio::time::timeout(Duration::from_secs(5), follower).await.unwrap().unwrap().unwrap();
    assert_eq!(gov.queued(), 0);
    assert_eq!(gov.leased(), 80 * MIB);
    drop((f, holder));
    assert_eq!(gov.leased(), 0);
}

#[tokio::test]
async fn queue_timeout_names_the_holders() {
    let gov = governor(100);
    let _a = gov.lease(LeaseRequest::bytes("model_a", 60 * MIB)).await.unwrap();
    let err =
        gov.lease(LeaseRequest::bytes("model_b", 50 * MIB).with_timeout(Duration::from_millis(30))).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("model_b") && msg.contains("timed out"), "{msg}");
    assert!(msg.contains("model_a (60MiB)"), "{msg}");
    assert_eq!(gov.queued(), 0);
    assert_eq!(gov.leased(), 60 * MIB);
}

#[tokio::test]
async fn queue_rejects_what_can_never_fit() {
    let gov = governor(100);
    let err = gov.lease(LeaseRequest::bytes("huge", 90 * MIB)).await.unwrap_err();
    assert!(err.to_string().contains("at most 85MiB"), "{err}");
}

#[tokio::test]
async fn queue_profiles_resolve_against_budget() {
    let gov = governor(100);
    let l = gov.lease_size("m", LeaseSize::Profile(Profile::M)).await.unwrap();
    assert_eq!(l.bytes(), 30 * MIB);
}

#[tokio::test]
async fn pressure_high_holds_new_leases_until_it_falls() {
    let gov = governor(100);
    let mut rx = gov.subscribe();
    let first = gov.lease(LeaseRequest::bytes("first", 10 * MIB)).await.unwrap();
    gov.set_pressure(Pressure::High);
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow(), Pressure::High);
    let g = gov.clone();
    let second = tokio::spawn(async move { g.lease(LeaseRequest::bytes("second", 10 * MIB)).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!second.is_finished(), "at high pressure a new lease must wait");
    gov.set_pressure(Pressure::Normal);
    let second = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap().unwrap();
    drop((first, second));
}

#[tokio::test]
async fn heavy_slot_admits_one_heavy_step_at_a_time() {
    let gov = governor(100);
    let a = gov.lease(LeaseRequest::bytes("heavy_a", 10 * MIB).heavy()).await.unwrap();
    assert!(a.is_heavy());
    let g = gov.clone();
    let b = tokio::spawn(async move { g.lease(LeaseRequest::bytes("heavy_b", 10 * MIB).heavy()).await });
    let light = gov.lease(LeaseRequest::bytes("light", 10 * MIB)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!b.is_finished(), "second heavy lease must wait for the slot");
    drop(a);
    let b = tokio::time::timeout(Duration::from_secs(5), b).await.unwrap().unwrap().unwrap();
    drop((b, light));
    assert_eq!(gov.leased(), 0);
}

fn pool(gov: &Governor, mib: u64) -> Arc<dyn MemoryPool> {
    let lease = futures::executor::block_on(gov.lease(LeaseRequest::bytes("step_x", mib * MIB))).unwrap();
    lease.into_pool(PoolOptions::default())
}

#[test]
fn pool_idle_consumers_do_not_starve_the_active_one() {
    let gov = governor(200);
    let pool = pool(&gov, 100); // 80MiB spillable area, 20MiB reserve
    let a = MemoryConsumer::new("Sort[0]").with_can_spill(true).register(&pool);
    let _idle = MemoryConsumer::new("Sort[1]").with_can_spill(true).register(&pool);
    // FairSpillPool would cap `a` at 40MiB because two spillers are registered.
    a.try_grow((70 * MIB) as usize).unwrap();
    assert!(a.try_grow((20 * MIB) as usize).is_err(), "spillable area is 80MiB");
    // `b` becomes the second active consumer: its share is 40MiB. `a` overran that share while
    // alone, so `b` may borrow from the reserve while the lease has room ...
    let b = MemoryConsumer::new("Agg[0]").with_can_spill(true).register(&pool);
    b.try_grow((20 * MIB) as usize).unwrap();
    assert!(b.try_grow((25 * MIB) as usize).is_err(), "b may not pass its 40MiB share");
    // ... and `a`, past its share now, is refused at its next growth, so it spills.
    assert!(a.try_grow(MIB as usize).is_err());
    a.shrink((60 * MIB) as usize);
    b.try_grow((15 * MIB) as usize).unwrap();
    assert_eq!(gov.reserved(), 45 * MIB);
}

#[test]
fn pool_a_spillable_consumer_that_holds_nothing_gets_its_first_allocation_within_its_share() {
    let gov = governor(200);
    let pool = pool(&gov, 100); // 80MiB spillable area
    let a = MemoryConsumer::new("Agg[0]").with_can_spill(true).register(&pool);
    let b = MemoryConsumer::new("Agg[1]").with_can_spill(true).register(&pool);
    a.try_grow((60 * MIB) as usize).unwrap();
    b.try_grow((40 * MIB) as usize).unwrap(); // the lease is full
                                              // A third aggregate has nothing to spill: refusing it would fail the query. Within its share
                                              // (80/3 MiB) it gets its first allocation, an overdraft the others repay when refused.
    let c = MemoryConsumer::new("Agg[2]").with_can_spill(true).register(&pool);
    c.try_grow((8 * MIB) as usize).unwrap();
    assert!(a.try_grow(MIB as usize).is_err(), "a is past its share now, and spills");
    // Past its share, even a first allocation is refused.
    let d = MemoryConsumer::new("Agg[3]").with_can_spill(true).register(&pool);
    assert!(d.try_grow((30 * MIB) as usize).is_err());
}

#[test]
fn pool_unspillable_error_names_step_consumer_and_numbers() {
    let gov = governor(200);
    let pool = pool(&gov, 100);
    let join = MemoryConsumer::new("HashJoinInput[3]").register(&pool);
    join.try_grow((90 * MIB) as usize).unwrap(); // unspillable may use the whole lease
    let err = join.try_grow((20 * MIB) as usize).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("Resources exhausted"), "{msg}");
    for part in ["step \"step_x\"", "HashJoinInput[3]", "cannot spill", "20MiB", "90MiB", "Lease 100MiB"] {
        assert!(msg.contains(part), "missing {part:?} in {msg}");
    }
    // A spillable consumer gets only what is left (10MiB) ...
    let sort = MemoryConsumer::new("Sort[0]").with_can_spill(true).register(&pool);
    assert!(sort.try_grow((11 * MIB) as usize).is_err());
    sort.try_grow((10 * MIB) as usize).unwrap();
    // ... and never the unspillable reserve (20% of the lease), even when it is idle.
    drop(join);
    assert!(sort.try_grow((71 * MIB) as usize).is_err());
    sort.try_grow((70 * MIB) as usize).unwrap();
}

#[test]
fn pool_pressure_makes_spillable_consumers_spill_early() {
    let gov = governor(200);
    let pool = pool(&gov, 100);
    let sort = MemoryConsumer::new("Sort[0]").with_can_spill(true).register(&pool);
    sort.try_grow((5 * MIB) as usize).unwrap();
    gov.set_pressure(Pressure::Moderate);
    let err = sort.try_grow((10 * MIB) as usize).unwrap_err();
    assert!(err.to_string().contains("pressure is moderate"), "{err}");
    // Unspillable consumers are not refused by pressure, only by the lease's size.
    let join = MemoryConsumer::new("HashJoinInput[0]").register(&pool);
    join.try_grow((10 * MIB) as usize).unwrap();
    gov.set_pressure(Pressure::Normal);
    sort.try_grow((10 * MIB) as usize).unwrap();
}

#[test]
fn pool_drop_returns_the_lease() {
    let gov = governor(200);
    let pool = pool(&gov, 100);
    assert_eq!(gov.leased(), 100 * MIB);
    let r = MemoryConsumer::new("x").register(&pool);
    r.try_grow(1000).unwrap();
    drop(r);
    drop(pool);
    assert_eq!(gov.leased(), 0);
    assert_eq!(gov.reserved(), 0);
}

#[test]
fn sampler_records_jemalloc_and_rss() {
    let gov = governor(100);
    let big = vec![1u8; 32 << 20];
    let s = gov.sample_now();
    assert!(s.allocated >= 32 << 20, "jemalloc is the global allocator here: {s:?}");
    assert!(s.resident >= s.allocated / 2 && s.rss > 0, "{s:?}");
    assert!(gov.timeline().samples().len() >= 2);
    assert!(gov.timeline().peak_resident() >= s.resident);
    drop(std::hint::black_box(big));
}

#[tokio::test]
async fn queue_growable_lease_respects_budget_and_queue() {
    let gov = governor(100); // 85MiB leasable
    let mut held = gov.try_lease_now("handoff", 0).unwrap();
    assert!(held.try_grow(60 * MIB));
    assert!(!held.try_grow(30 * MIB), "would pass the leasable bytes");
    let g = gov.clone();
    let waiter = tokio::spawn(async move { g.lease(LeaseRequest::bytes("step", 40 * MIB)).await });
    while gov.queued() < 1 {
        tokio::task::yield_now().await;
    }
    assert!(!held.try_grow(MIB), "growth never jumps the queue");
    assert!(gov.try_lease_now("other", MIB).is_none());
    held.shrink(30 * MIB); // gives back enough for the waiter
    let step = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(gov.leased(), 70 * MIB);
    drop((held, step));
    assert_eq!(gov.leased(), 0);
}

/// RepartitionExec's in-flight batches are always granted (and counted): refusing them makes it
/// spill into its spill pool, which can deadlock in DataFusion 55 (apache/datafusion#24883).
#[test]
fn pool_repartition_is_never_refused_but_counted() {
    let gov = governor(200);
    let pool = pool(&gov, 100);
    let sort = MemoryConsumer::new("Sort[0]").with_can_spill(true).register(&pool);
    sort.try_grow((30 * MIB) as usize).unwrap();
    let rep = MemoryConsumer::new("RepartitionExec[0]").with_can_spill(true).register(&pool);
    rep.try_grow((60 * MIB) as usize).unwrap();
    rep.try_grow((20 * MIB) as usize).unwrap();
    assert_eq!(gov.reserved(), 110 * MIB);
    // The others make room: the lease is over-full, so they are refused and spill.
    assert!(sort.try_grow(MIB as usize).is_err());
    // A consumer that holds nothing still gets a first allocation within its share (refusing it
    // would fail it: it has nothing to spill), and nothing more while the lease is over-full.
    let other = MemoryConsumer::new("Agg[0]").with_can_spill(true).register(&pool);
    other.try_grow(MIB as usize).unwrap();
    assert!(other.try_grow(MIB as usize).is_err());
}

/// Two governors (as two processes would) on one ledger of 100MiB: the second's lease waits
/// while the first holds 80MiB, is granted when it is released, and each sees the other's
/// holding in the ledger.
#[tokio::test]
async fn ledger_a_lease_waits_for_another_governors_release() {
    let dir = tempfile::tempdir().unwrap();
    let on_ledger = |label: &str| {
        let mut c = GovernorConfig::new(200 * MIB);
        c.sample_interval = Duration::from_millis(10);
        c.ledger = Some(LedgerConfig { path: dir.path().join("ledger"), capacity: 100 * MIB, label: label.into() });
        Governor::new(c).unwrap()
    };
    let (a, b) = (on_ledger("a"), on_ledger("b"));
    let held = a.lease(LeaseRequest::bytes("big", 80 * MIB)).await.unwrap();
    let waiting = tokio::spawn(async move { b.lease(LeaseRequest::bytes("other", 50 * MIB)).await.map(|l| l.bytes()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "80MiB + 50MiB do not fit in the machine's 100MiB");
    let live = ledger::read_live(&dir.path().join("ledger"));
    assert_eq!(live.iter().map(|h| h.bytes).sum::<u64>(), 80 * MIB);
    drop(held);
    let granted = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(granted, 50 * MIB);
    // Too large for the machine at all: refused at once.
    let e = a.lease(LeaseRequest::bytes("huge", 150 * MIB)).await.unwrap_err();
    assert!(e.to_string().contains("at most 100MiB"), "{e}");
}

/// A governor of 100MiB, one process of several on the 100MiB ledger at `path`: what cannot
/// spill in an elastic lease waits for the machine up to `wait` (its lease timeout).
fn on_ledger(path: &std::path::Path, label: &str, wait: Duration) -> Governor {
    let mut c = GovernorConfig::new(100 * MIB);
    c.sample_interval = Duration::from_secs(3600);
    c.headroom = 0.0;
    c.ledger = Some(LedgerConfig { path: path.to_path_buf(), capacity: 100 * MIB, label: label.into() });
    c.lease_timeout = Some(wait);
    Governor::new(c).unwrap()
}

/// An elastic pool (`grow_to`) on a machine-wide ledger of 100MiB: its lease starts at one
/// step and follows what is reserved, so another governor (process) gets a lease beside it;
/// growth the machine cannot lend now is waited for up to the lease timeout, then refused, and
/// what is freed goes back to the ledger.
#[tokio::test]
async fn ledger_an_elastic_pool_holds_what_it_uses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let governor = |label: &str| on_ledger(&path, label, Duration::from_millis(300));
    let held = || ledger::read_live(&path).iter().map(|h| h.bytes).sum::<u64>();
    let (a, b) = (governor("views"), governor("sql"));
    let step = GROW_STEP as u64;
    let lease = a.lease(LeaseRequest::bytes("views", step)).await.unwrap();
    let pool: Arc<dyn MemoryPool> = lease.into_pool(PoolOptions {
        grow_to: Some(a.leasable()),
        unspillable_reserve: 0.0,
        ..PoolOptions::default()
    });
    assert_eq!(held(), step, "starts at one step");
    let state = MemoryConsumer::new("view q1").register(&pool);
    state.try_grow(40 * MIB as usize).unwrap();
    assert_eq!(held(), 48 * MIB, "grown by whole steps to cover 40MiB");
    // Another process leases 40MiB beside it at once (a fixed lease of the budget would make it
    // wait for the views' whole life).
    let other = tokio::time::timeout(Duration::from_secs(5), b.lease(LeaseRequest::bytes("sql", 40 * MIB)))
        .await
        .expect("granted at once")
        .unwrap();
    // 48 + 40 of 100: 20MiB more does not fit now; waited for up to the lease timeout, then
    // refused saying so.
    let t = Instant::now();
    let e = state.try_grow(20 * MIB as usize).unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(300), "waited {:?}", t.elapsed());
    assert!(e.to_string().contains("elastic, up to") && e.to_string().contains("of waiting"), "{e}");
    state.try_grow(4 * MIB as usize).unwrap();
    drop(other);
    state.try_grow(20 * MIB as usize).unwrap();
    assert_eq!(held(), 64 * MIB);
    // Freed: given back beyond one step kept.
    state.shrink(60 * MIB as usize);
    assert_eq!(held(), 32 * MIB, "4MiB reserved, rounded up with one step kept free");
    drop(state);
    drop(pool);
    assert_eq!(held(), 0);
}

/// A consumer that cannot spill, of an elastic lease, waits while another process holds the
/// memory the lease would grow into, and goes on once it is freed (instead of failing its
/// transaction); a spillable one is refused at once (it spills), and so is growth past the
/// ceiling (no wait makes the process's own budget larger).
#[tokio::test]
async fn ledger_an_elastic_pools_unspillable_growth_waits_for_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let governor = |label: &str| on_ledger(&path, label, Duration::from_secs(60));
    let (a, b) = (governor("views"), governor("sql"));
    let lease = a.lease(LeaseRequest::bytes("views", GROW_STEP as u64)).await.unwrap();
    let pool: Arc<dyn MemoryPool> = lease.into_pool(PoolOptions {
        grow_to: Some(a.leasable()),
        unspillable_reserve: 0.0,
        ..PoolOptions::default()
    });
    let state = MemoryConsumer::new("view q1 (changes in flight)").register(&pool);
    state.try_grow(40 * MIB as usize).unwrap();
    let other = b.lease(LeaseRequest::bytes("sql", 50 * MIB)).await.unwrap();

    // Spillable: refused at once. Past the ceiling: refused at once.
    let sort = MemoryConsumer::new("sort").with_can_spill(true).register(&pool);
    let t = Instant::now();
    assert!(sort.try_grow(30 * MIB as usize).is_err());
    assert!(state.try_grow(80 * MIB as usize).is_err());
    assert!(t.elapsed() < Duration::from_millis(200), "no wait: {:?}", t.elapsed());

    // 48 + 50 of 100: 20MiB more waits until the other process lets its lease go.
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let got = state.try_grow(20 * MIB as usize);
        (got.map(|_| state.size()), t.elapsed(), state)
    });
    std::thread::sleep(Duration::from_millis(400));
    let finished_early = waiter.is_finished();
    drop(other);
    let (got, waited, _state) = waiter.join().unwrap();
    assert!(!finished_early, "waits while the machine cannot lend it: {got:?}");
    assert_eq!(got.unwrap(), 60 * MIB as usize);
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert_eq!(pool.reserved(), 60 * MIB as usize);
    assert!(waited < Duration::from_secs(5), "went on once freed: {waited:?}");
}
