//! What the views' in-memory structures really cost, in the bytes the allocator hands out: a
//! box by its size class, a hash table by its bucket array, a B-tree by its nodes. Operators
//! charge these, not a per-entry guess, so that the bytes reserved from the governor are the
//! bytes jemalloc allocated (checked within 25% by `tests/state_bytes.rs`).

pub(crate) use spillway_governor::jemalloc::alloc_size;

/// A boxed slice of `len` bytes (a row or key).
pub(crate) fn boxed(len: usize) -> usize {
    alloc_size(len)
}

/// The bucket array of a `std` hash map (hashbrown) with `capacity` whose entries are `T`:
/// buckets of `T` plus one control byte each and a 16-byte group of trailing control bytes.
pub(crate) fn table<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    // hashbrown's capacity is buckets - 1 below 8 buckets, 7/8 of them from 8 on.
    let buckets =
        if capacity < 8 { (capacity + 1).next_power_of_two() } else { (capacity / 7 * 8).next_power_of_two() };
    let entries = (buckets * std::mem::size_of::<T>()).next_multiple_of(16);
    alloc_size(entries + buckets + 16)
}

/// A `BTreeMap` of `len` entries of `K`/`V`: its nodes (11 entries each, about 8 filled on
/// average once it splits; one node below 12), each with its parent link and lengths.
pub(crate) fn btree<K, V>(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let node = alloc_size(11 * (std::mem::size_of::<K>() + std::mem::size_of::<V>()) + 16);
    let nodes = if len <= 11 { 1 } else { len.div_ceil(8) };
    nodes * node
}
