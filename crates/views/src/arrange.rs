//! [`Arrangement`]: rows by key, each with its multiplicity, packed so that the bytes it charges
//! are the bytes it holds.
//!
//! ```text
//!   arena    [klen rlen|key|row][klen rlen|key|row] ...   chunks of 4KiB doubling to 256KiB,
//!                                                           append-only, compacted
//!   entries  {at, weight, prev, next}   20 bytes each (48 bits of place, 48 of weight), in
//!                                       segments of 8,192 (the first growing from 64)
//!   by_key   hash(key)      ──▶ first entry of the key's chain (prev/next link its rows; the
//!                               head's prev holds the chain's length)
//!   by_row   hash(key, row) ──▶ the entry, for the rows of keys with more than 8 rows only
//!                               (an update finds its row without walking a long chain)
//! ```
//!
//! A row costs its key and row bytes, their two lengths (a varint each, one byte below 128), 20
//! bytes of entry and, for a new key, about 6–11 bytes in `by_key` (4 bytes and a control byte
//! per bucket), with no allocation of its own: against a nested map of boxed rows (a box per row
//! and per key, a hash table per key: ~270 bytes for a 40-byte row) it holds about a third. An
//! update of a key with few rows walks its chain (at most 8 rows) instead of looking the row up
//! in a table of every row, which saved another ~8 bytes a row; a key that grows past 8 rows
//! (a hot join key, a view's contents under one empty key) has its rows put in `by_row`, so that
//! no update walks more than 8. A small arrangement stays small: its first chunk and segment
//! start at a few KiB (a thousand views of a few rows each must not cost a chunk and a segment
//! apiece). Growth is in fixed steps (a chunk, a segment), so no doubling copy
//! of the whole state ever exists; only the two tables grow by doubling, and
//! [`Arrangement::growth`] says what the next additions may allocate, tables included, so that a
//! caller reserves it before adding. Deleted rows leave dead bytes in the arena; once they
//! outweigh the live ones the arena may be rewritten ([`Arrangement::compact_if`]), when the
//! copy it holds meanwhile can be reserved.

use crate::mem::{alloc_size, table};
use hashbrown::HashTable;

/// Entries per segment of the entry vector.
const SEG: usize = 8192;
/// Bytes per arena chunk, at most (a larger row gets a chunk of its own size).
const CHUNK: usize = 256 << 10;
/// Bytes of the first arena chunk; each next one doubles, up to [`CHUNK`].
const FIRST_CHUNK: usize = 4 << 10;
/// Entries the first segment starts with; it doubles up to [`SEG`].
const FIRST_SEG: usize = 64;
/// No entry (the end of a chain or of the free list).
const NIL: u32 = u32::MAX;
/// In a chain head's `prev` (a head has no previous entry): marks the head, beside either the
/// chain's length (below [`LONG`]) or [`INDEXED`].
const HEAD: u32 = 1 << 31;
/// In a chain head's `prev`: the chain's rows are in `by_row`.
const INDEXED: u32 = 1 << 30;
/// Rows of one key from which they are found through `by_row` rather than by walking the chain.
const LONG: u32 = 9;
/// Entries an arrangement may hold: an entry number must not reach the [`HEAD`] bit.
const MAX_ENTRIES: u32 = HEAD - 1;
/// Bits of a record's offset in its chunk, in an entry's `at` (the chunk's index above them).
const OFFSET_BITS: u32 = 24;
/// Chunks an arena may have (16M of at most 256KiB each but the oversized: 4TiB).
const MAX_CHUNKS: usize = 1 << (48 - OFFSET_BITS);
/// The largest multiplicity an entry holds (48 bits, signed: 1.4 × 10^14).
const MAX_WEIGHT: i64 = (1 << 47) - 1;

/// One row's place, multiplicity and chain links, in 20 bytes: `at` and `weight` take 48 bits
/// each (a 24-byte struct of an `u64`, an `i64` and two `u32`s cost 4 bytes a row more).
#[derive(Clone, Copy)]
struct Entry {
    /// The low 32 bits of `at`: the chunk index (above [`OFFSET_BITS`]) and the offset in it of
    /// the record `varint(klen) varint(rlen) key row`.
    at_lo: u32,
    /// The high 16 bits of `at` (low half) and the low 16 bits of the weight (high half).
    mid: u32,
    /// The high 32 bits of the weight, the multiplicity; 0 marks a free slot (then `next` links
    /// the free list).
    weight_hi: u32,
    /// The previous entry of the key's chain; for the chain's head, [`HEAD`] and either the
    /// chain's length or [`INDEXED`].
    prev: u32,
    next: u32,
}

impl Entry {
    fn new(at: u64, weight: i64, prev: u32, next: u32) -> Entry {
        let mut e = Entry { at_lo: 0, mid: 0, weight_hi: 0, prev, next };
        e.set_at(at);
        e.set_weight(weight);
        e
    }

    fn at(&self) -> u64 {
        self.at_lo as u64 | ((self.mid as u64 & 0xffff) << 32)
    }

    fn set_at(&mut self, at: u64) {
        debug_assert!(at < 1 << 48);
        self.at_lo = at as u32;
        self.mid = (self.mid & 0xffff_0000) | ((at >> 32) as u32 & 0xffff);
    }

    fn weight(&self) -> i64 {
        let raw = (self.mid >> 16) as u64 | ((self.weight_hi as u64) << 16);
        ((raw << 16) as i64) >> 16
    }

    /// Sets the multiplicity; one beyond ±[`MAX_WEIGHT`] (no table has that many rows) is a bug.
    fn set_weight(&mut self, weight: i64) {
        assert!((-MAX_WEIGHT..=MAX_WEIGHT).contains(&weight), "a row's multiplicity {weight} passes 48 bits");
        let raw = weight as u64;
        self.mid = (self.mid & 0xffff) | (((raw & 0xffff) as u32) << 16);
        self.weight_hi = (raw >> 16) as u32;
    }
}

/// The arena and the entries, apart from the tables so that a table's rehash can read them.
#[derive(Default)]
struct Store {
    chunks: Vec<Vec<u8>>,
    segs: Vec<Vec<Entry>>,
    /// Arena bytes written (live and dead).
    used: usize,
}

impl Store {
    fn entry(&self, i: u32) -> &Entry {
        &self.segs[i as usize / SEG][i as usize % SEG]
    }

    fn entry_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.segs[i as usize / SEG][i as usize % SEG]
    }

    /// Entry `i`'s key and row, and the bytes its record takes in the arena.
    fn record(&self, i: u32) -> (&[u8], &[u8], usize) {
        let at = self.entry(i).at();
        let (c, o) = ((at >> OFFSET_BITS) as usize, (at & ((1 << OFFSET_BITS) - 1)) as usize);
        let bytes = &self.chunks[c][o..];
        let (klen, a) = varint(bytes);
        let (rlen, b) = varint(&bytes[a..]);
        let key = a + b;
        (&bytes[key..key + klen], &bytes[key + klen..key + klen + rlen], key + klen + rlen)
    }

    fn key(&self, i: u32) -> &[u8] {
        self.record(i).0
    }

    fn row(&self, i: u32) -> &[u8] {
        self.record(i).1
    }

    /// Copies the record of `key` and `row` to the arena; where it starts.
    fn put(&mut self, key: &[u8], row: &[u8]) -> u64 {
        let mut head = [0u8; 2 * VARINT_MAX];
        let h = put_varint(&mut head, key.len());
        let h = h + put_varint(&mut head[h..], row.len());
        let n = h + key.len() + row.len();
        let fits = self.chunks.last().is_some_and(|c| c.capacity() - c.len() >= n && c.len() < 1 << OFFSET_BITS);
        if !fits {
            assert!(self.chunks.len() < MAX_CHUNKS, "an arrangement's arena holds at most {MAX_CHUNKS} chunks");
            let next = self.chunks.last().map_or(FIRST_CHUNK, |c| (c.capacity() * 2).clamp(FIRST_CHUNK, CHUNK));
            self.chunks.push(Vec::with_capacity(n.max(next)));
        }
        let c = self.chunks.len() - 1;
        let chunk = &mut self.chunks[c];
        let at = ((c as u64) << OFFSET_BITS) | chunk.len() as u64;
        chunk.extend_from_slice(&head[..h]);
        chunk.extend_from_slice(key);
        chunk.extend_from_slice(row);
        self.used += n;
        at
    }
}

/// The most bytes a length takes as a varint (7 bits a byte).
const VARINT_MAX: usize = 10;

/// Writes `n` as a varint to the front of `out`; the bytes written.
fn put_varint(out: &mut [u8], mut n: usize) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    i + 1
}

/// The varint at the front of `bytes` and the bytes it takes.
fn varint(bytes: &[u8]) -> (usize, usize) {
    let (mut n, mut shift, mut i) = (0usize, 0, 0);
    loop {
        let b = bytes[i];
        n |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b < 0x80 {
            return (n, i);
        }
        shift += 7;
    }
}

/// The bytes `n` takes as a varint.
const fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    if bits == 0 {
        1
    } else {
        bits.div_ceil(7) as usize
    }
}

/// Rows by key with their multiplicities. See the [module docs](self).
pub struct Arrangement {
    store: Store,
    /// The free list's head and length.
    free: u32,
    free_len: usize,
    slots: u32,
    by_key: HashTable<u32>,
    by_row: HashTable<u32>,
    len: usize,
    /// Arena bytes of live entries (the rest of the arena is dead).
    live: usize,
    seed: u64,
}

impl Default for Arrangement {
    fn default() -> Self {
        Self::new()
    }
}

impl Arrangement {
    /// An empty arrangement.
    pub fn new() -> Self {
        Arrangement {
            store: Store::default(),
            free: NIL,
            free_len: 0,
            slots: 0,
            by_key: HashTable::new(),
            by_row: HashTable::new(),
            len: 0,
            live: 0,
            seed: seed(),
        }
    }

    /// Rows held (distinct `(key, row)` with a weight other than 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct keys held.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// The bytes allocated for it: the arena's chunks, the entry segments, the two tables.
    pub fn bytes(&self) -> usize {
        let chunks: usize = self.store.chunks.iter().map(|c| alloc_size(c.capacity())).sum();
        let segs: usize = self.store.segs.iter().map(|s| alloc_size(s.capacity() * std::mem::size_of::<Entry>())).sum();
        chunks
            + segs
            + alloc_size(self.store.segs.capacity() * 24 + self.store.chunks.capacity() * 24)
            + table::<u32>(self.by_key.capacity())
            + table::<u32>(self.by_row.capacity())
    }

    /// At most what adding `rows` new rows of `bytes` key and row bytes in all may allocate,
    /// while it happens (a table that doubles holds its old buckets until the new ones are
    /// filled) — what a caller reserves before adding them.
    pub fn growth(&self, rows: usize, bytes: usize) -> usize {
        if rows == 0 {
            return 0;
        }
        let tables = |t: &HashTable<u32>, n: usize| {
            if t.len() + n <= t.capacity() {
                0
            } else {
                table::<u32>((t.len() + n).max(t.capacity() * 2))
            }
        };
        // New chunks past the tail's free bytes, in the sizes `put` allocates them (doubling up
        // to CHUNK), and one more for the tails records leave unused; new segments past the
        // free slots. No length exceeds `bytes`, so none takes more varint bytes than it.
        let tail = self.store.chunks.last().map_or(0, |c| c.capacity() - c.len());
        let bytes = bytes + rows * 2 * varint_len(bytes);
        let mut arena = 0;
        if bytes > tail {
            let mut next =
                self.store.chunks.last().map_or(FIRST_CHUNK, |c| (c.capacity() * 2).clamp(FIRST_CHUNK, CHUNK));
            let mut covered = 0;
            while covered < bytes - tail {
                arena += next;
                covered += next;
                next = (next * 2).min(CHUNK);
            }
            arena += next;
        }
        let entry = std::mem::size_of::<Entry>();
        let capacity: usize = self.store.segs.iter().map(|s| s.capacity()).sum();
        let mut need = rows.saturating_sub(self.free_len + (capacity - self.slots as usize));
        // The first segment doubles up to SEG entries (each new buffer counted whole), then
        // whole segments follow.
        let mut segs = 0;
        let mut cap = match &self.store.segs[..] {
            [] => 0,
            [first] => first.capacity(),
            _ => SEG,
        };
        while need > 0 && cap < SEG {
            let grown = if cap == 0 { FIRST_SEG } else { (cap * 2).min(SEG) };
            segs += alloc_size(grown * entry);
            need = need.saturating_sub(grown - cap);
            cap = grown;
        }
        segs += need.div_ceil(SEG) * alloc_size(SEG * entry);
        arena + segs + tables(&self.by_row, rows) + tables(&self.by_key, rows)
    }

    /// The multiplicity of `row` under `key` (0 when absent).
    pub fn weight(&self, key: &[u8], row: &[u8]) -> i64 {
        let hk = self.key_hash(key);
        self.head(key, hk).and_then(|h| self.find(h, hk, key, row)).map_or(0, |i| self.store.entry(i).weight())
    }

    /// The head of `key`'s chain (`hk` its hash), if it has rows.
    fn head(&self, key: &[u8], hk: u64) -> Option<u32> {
        let s = &self.store;
        self.by_key.find(hk, |&j| s.key(j) == key).copied()
    }

    /// The entry of `row` in the chain headed by `head` (of `key`, hashed `hk`): looked up in
    /// `by_row` when the chain is indexed, else found by walking it.
    fn find(&self, head: u32, hk: u64, key: &[u8], row: &[u8]) -> Option<u32> {
        let s = &self.store;
        if s.entry(head).prev & INDEXED != 0 {
            return self.by_row.find(hash(hk, row), |&i| s.key(i) == key && s.row(i) == row).copied();
        }
        let mut i = head;
        while i != NIL {
            if s.row(i) == row {
                return Some(i);
            }
            i = s.entry(i).next;
        }
        None
    }

    /// The rows under `key` with their multiplicities.
    pub fn get<'a>(&'a self, key: &[u8]) -> Group<'a> {
        Group { store: &self.store, next: self.head(key, self.key_hash(key)).unwrap_or(NIL) }
    }

    /// Whether `key` has rows.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.head(key, self.key_hash(key)).is_some()
    }

    /// Every `(key, row, weight)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], i64)> + '_ {
        let s = &self.store;
        (0..self.slots)
            .filter(move |&i| s.entry(i).weight() != 0)
            .map(move |i| (s.key(i), s.row(i), s.entry(i).weight()))
    }

    /// Every row, repeated as often as it is held (a row held a negative number of times, not
    /// at all), in no particular order: the multiset it stands for.
    pub fn rows(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().flat_map(|(_, r, c)| std::iter::repeat_n(r, c.max(0) as usize))
    }

    /// Adds `weight` to `row` under `key` (a row whose weight reaches 0 is removed).
    pub fn add(&mut self, key: &[u8], row: &[u8], weight: i64) {
        if weight == 0 {
            return;
        }
        let hk = self.key_hash(key);
        let head = self.head(key, hk);
        match head.and_then(|h| self.find(h, hk, key, row)).zip(head) {
            Some((i, head)) => {
                let e = self.store.entry_mut(i);
                let w = e.weight() + weight;
                e.set_weight(w);
                if w == 0 {
                    self.remove(i, head, hk);
                }
            }
            None => self.insert(key, row, weight, hk, head),
        }
    }

    fn insert(&mut self, key: &[u8], row: &[u8], weight: i64, hk: u64, head: Option<u32>) {
        let at = self.store.put(key, row);
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.store.entry(i).next;
            self.free_len -= 1;
            i
        } else {
            let i = self.slots;
            assert!(i < MAX_ENTRIES, "an arrangement holds at most {MAX_ENTRIES} rows");
            if i as usize / SEG == self.store.segs.len() {
                let first = self.store.segs.is_empty();
                self.store.segs.push(Vec::with_capacity(if first { FIRST_SEG } else { SEG }));
            }
            self.store.segs[i as usize / SEG].push(Entry::new(0, 0, NIL, NIL));
            self.slots += 1;
            i
        };
        let Arrangement { store, by_key, by_row, seed, .. } = self;
        let rehash = |store: &Store, j: u32| hash(hash(*seed, store.key(j)), store.row(j));
        match head {
            // Into its key's chain right after the head; the chain indexed once it is long.
            Some(head) => {
                let after = store.entry(head).next;
                *store.entry_mut(i) = Entry::new(at, weight, head, after);
                store.entry_mut(head).next = i;
                if after != NIL {
                    store.entry_mut(after).prev = i;
                }
                let meta = store.entry(head).prev;
                if meta & INDEXED != 0 {
                    by_row.insert_unique(hash(hk, row), i, |&j| rehash(store, j));
                } else if (meta & !HEAD) + 1 < LONG {
                    store.entry_mut(head).prev = meta + 1;
                } else {
                    store.entry_mut(head).prev = HEAD | INDEXED;
                    let mut j = head;
                    while j != NIL {
                        by_row.insert_unique(hash(hk, store.row(j)), j, |&j| rehash(store, j));
                        j = store.entry(j).next;
                    }
                }
            }
            None => {
                *store.entry_mut(i) = Entry::new(at, weight, HEAD | 1, NIL);
                by_key.insert_unique(hk, i, |&j| hash(*seed, store.key(j)));
            }
        }
        self.len += 1;
        self.live += self.store.record(i).2;
    }

    /// Removes entry `i`, in the chain headed by `head` of a key hashed `hk`.
    fn remove(&mut self, i: u32, head: u32, hk: u64) {
        let Entry { prev, next, .. } = *self.store.entry(i);
        let (_, row, record) = self.store.record(i);
        let hr = hash(hk, row);
        let meta = self.store.entry(head).prev;
        let Arrangement { store, by_key, by_row, .. } = self;
        if meta & INDEXED != 0 {
            if let Ok(e) = by_row.find_entry(hr, |&j| j == i) {
                e.remove();
            }
        }
        // What the head's `prev` says once `i` is gone: the length one less, unless indexed.
        let meta = if meta & INDEXED != 0 { meta } else { meta - 1 };
        if i == head {
            // The next row becomes the head, or the key goes.
            match by_key.find_entry(hk, |&j| j == i) {
                Ok(h) if next != NIL => *h.into_mut() = next,
                Ok(h) => {
                    h.remove();
                }
                Err(_) => debug_assert!(false, "a chain's head is in by_key"),
            }
            if next != NIL {
                store.entry_mut(next).prev = meta;
            }
        } else {
            store.entry_mut(prev).next = next;
            if next != NIL {
                store.entry_mut(next).prev = prev;
            }
            store.entry_mut(head).prev = meta;
        }
        *store.entry_mut(i) = Entry::new(0, 0, NIL, self.free);
        self.free = i;
        self.free_len += 1;
        self.len -= 1;
        self.live -= record;
    }

    /// Arena bytes of removed rows.
    fn dead(&self) -> usize {
        self.store.used - self.live
    }

    /// Whether the arena is worth rewriting (its dead bytes outweigh the live ones), and what
    /// the rewrite holds meanwhile: the live bytes, copied before the old chunks go.
    pub fn compaction(&self) -> Option<usize> {
        (self.dead() > self.live.max(CHUNK)).then_some(self.live + CHUNK)
    }

    /// Rewrites the arena when [`Arrangement::compaction`] says so and `reserve` grants what the
    /// rewrite holds meanwhile (its guard is held until the old chunks are freed); otherwise
    /// leaves it as it is, dead bytes and all (still charged), for a later try.
    pub fn compact_if<G>(&mut self, reserve: impl FnOnce(usize) -> Option<G>) {
        let Some(need) = self.compaction() else { return };
        let Some(guard) = reserve(need) else { return };
        self.compact();
        drop(guard);
    }

    /// Rewrites the arena with only the live rows.
    fn compact(&mut self) {
        let mut fresh = Store::default();
        for i in 0..self.slots {
            if self.store.entry(i).weight() == 0 {
                continue;
            }
            let at = fresh.put(self.store.key(i), self.store.row(i));
            self.store.entry_mut(i).set_at(at);
        }
        self.store.chunks = fresh.chunks;
        self.store.used = fresh.used;
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = Arrangement { seed: self.seed, ..Arrangement::new() };
    }

    fn key_hash(&self, key: &[u8]) -> u64 {
        hash(self.seed, key)
    }
}

/// The rows under one key: `(row, weight)`.
pub struct Group<'a> {
    store: &'a Store,
    next: u32,
}

impl<'a> Iterator for Group<'a> {
    type Item = (&'a [u8], i64);
    fn next(&mut self) -> Option<Self::Item> {
        if self.next == NIL {
            return None;
        }
        let i = self.next;
        let e = self.store.entry(i);
        self.next = e.next;
        Some((self.store.row(i), e.weight()))
    }
}

/// A per-process random seed, so that rows chosen to collide on one machine do not on another.
fn seed() -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
}

/// A fast hash of `bytes` (8 bytes per multiply, then a full avalanche): hashbrown takes its
/// bucket from the low bits and its tag from the top 7.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(31);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(31);
    }
    h ^= h >> 31;
    h = h.wrapping_mul(0x7fb5_d329_728e_a185);
    h ^= h >> 27;
    h = h.wrapping_mul(0x81da_def4_bc2d_d44d);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random adds and removals against a map of maps: every weight, group and count agrees,
    /// through chains whose head is removed and through compactions.
    #[test]
    fn arrangement_agrees_with_a_map_of_maps() {
        // Few keys: chains long enough to be indexed (and emptied, back to none); many keys:
        // chains short enough to be walked.
        for keys in [300, 30_000] {
            agrees_with_a_map_of_maps(keys);
        }
    }

    fn agrees_with_a_map_of_maps(keys: u64) {
        let mut a = Arrangement::new();
        let mut model: HashMap<Vec<u8>, HashMap<Vec<u8>, i64>> = HashMap::new();
        let mut x: u64 = 42;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..200_000 {
            let key = format!("k{}", rnd(keys)).into_bytes();
            let row = vec![b'r'; rnd(40) as usize];
            let w = [1, 1, 2, -1, -1, -2][rnd(6) as usize];
            a.add(&key, &row, w);
            let g = model.entry(key.clone()).or_default();
            *g.entry(row.clone()).or_default() += w;
            g.retain(|_, w| *w != 0);
            if g.is_empty() {
                model.remove(&key);
            }
            if step % 20_000 == 0 {
                if step % 40_000 == 0 {
                    a.compact_if(Some);
                }
                // Everything removed from one key in a row: its chain empties from the head.
                let k = format!("k{}", rnd(keys)).into_bytes();
                if let Some(g) = model.remove(&k) {
                    for (r, w) in g {
                        a.add(&k, &r, -w);
                    }
                }
            }
        }
        assert_eq!(a.keys(), model.len());
        assert_eq!(a.len(), model.values().map(|g| g.len()).sum::<usize>());
        for (k, g) in &model {
            let got: HashMap<Vec<u8>, i64> = a.get(k).map(|(r, w)| (r.to_vec(), w)).collect();
            assert_eq!(&got, g);
            for (r, w) in g {
                assert_eq!(a.weight(k, r), *w);
            }
        }
        assert_eq!(a.iter().count(), a.len());
        assert_eq!(a.weight(b"absent", b""), 0);
        assert!(!a.contains_key(b"absent"));
    }

    /// Deletes leave dead bytes; the arena is rewritten only when the copy is granted, and
    /// keeps every live row as it was.
    #[test]
    fn a_mostly_dead_arena_is_rewritten_only_when_granted() {
        let mut a = Arrangement::new();
        for i in 0..10_000u32 {
            a.add(&(i % 100).to_le_bytes(), &[i as u8; 100], 1);
            a.add(&(i % 100).to_le_bytes(), &i.to_le_bytes(), 1);
        }
        for i in 0..10_000u32 {
            a.add(&(i % 100).to_le_bytes(), &[i as u8; 100], -1);
        }
        let need = a.compaction().expect("most of the arena is dead");
        assert!(need < a.store.used / 2, "the copy is the live bytes, not the arena");
        let arena = a.store.used;
        a.compact_if(|_| None::<()>);
        assert_eq!(a.store.used, arena, "no rewrite without the reservation");
        a.compact_if(Some);
        assert_eq!(a.store.used, a.live);
        assert!(a.compaction().is_none());
        assert_eq!(a.len(), 10_000);
        for i in 0..10_000u32 {
            assert_eq!(a.weight(&(i % 100).to_le_bytes(), &i.to_le_bytes()), 1);
        }
    }

    /// What [`Arrangement::growth`] says a batch may add covers what it adds, batch after batch,
    /// and a batch of nothing adds nothing.
    #[test]
    fn growth_covers_what_a_batch_adds() {
        let mut a = Arrangement::new();
        assert_eq!(a.growth(0, 0), 0);
        for batch in 0..300u64 {
            let rows = 1 + (batch * 7919) % 20_000;
            let bytes = rows as usize * 24;
            let said = a.growth(rows as usize, bytes);
            let before = a.bytes();
            for i in 0..rows {
                a.add(&(batch * 100_000 + i).to_le_bytes(), &[7u8; 16], 1);
            }
            assert!(a.bytes() - before <= said, "batch {batch}: {} added, {said} said", a.bytes() - before);
        }
    }

    /// A few rows cost a few KiB, not a whole chunk and segment: a thousand small views stay
    /// small.
    #[test]
    fn a_few_rows_cost_a_few_kib() {
        let mut a = Arrangement::new();
        for i in 0..10u64 {
            a.add(&i.to_le_bytes(), &[1u8; 16], 1);
        }
        assert!(a.bytes() < 8 << 10, "{} bytes for 10 rows", a.bytes());
        // And what adding them is reserved as is as small (not a whole chunk ahead).
        let said = Arrangement::new().growth(10, 10 * 24);
        assert!(said < 16 << 10, "{said} bytes said for 10 rows");
        for n in [0, 1, 127, 128, 16_383, 16_384, usize::MAX] {
            let mut out = [0u8; 2 * VARINT_MAX];
            assert_eq!(put_varint(&mut out, n), varint_len(n), "{n}");
        }
    }

    /// An entry is 20 bytes and keeps any place and any weight within 48 bits, negative ones
    /// included.
    #[test]
    fn an_entry_packs_its_place_and_weight_in_twenty_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 20);
        let places = [0, 1, 0xffff_ffff, 1 << 32, (1 << 48) - 1, (77 << OFFSET_BITS) | 12345];
        let weights = [0, 1, -1, 2, -2, 65_535, -65_536, 1 << 40, -(1 << 40), MAX_WEIGHT, -MAX_WEIGHT];
        for at in places {
            for weight in weights {
                let mut e = Entry::new(at, weight, 3, 4);
                assert_eq!((e.at(), e.weight(), e.prev, e.next), (at, weight, 3, 4));
                e.set_weight(-weight);
                e.set_at(at ^ 1);
                assert_eq!((e.at(), e.weight()), (at ^ 1, -weight));
            }
        }
    }

    /// A million small rows cost about their bytes plus 30, not a box and a table each; under
    /// keys of a few rows no table of rows is kept, under hot keys one is (8 bytes a row more),
    /// so an update never walks more than a few rows.
    #[test]
    fn a_row_costs_its_bytes_and_about_thirty() {
        let per_row = |rows_per_key: u64| {
            let mut a = Arrangement::new();
            for i in 0..1_000_000u64 {
                a.add(&(i / rows_per_key).to_le_bytes(), &i.to_be_bytes(), 1);
            }
            for i in (0..1_000_000u64).step_by(3) {
                assert_eq!(a.weight(&(i / rows_per_key).to_le_bytes(), &i.to_be_bytes()), 1);
            }
            a.bytes() as f64 / 1e6
        };
        // 16 bytes of data, 2 of lengths, a 20-byte entry, a few in `by_key`.
        let short = per_row(4);
        assert!((16.0 + 22.0..16.0 + 28.0).contains(&short), "{short:.1} bytes per row under 4 rows a key");
        let hot = per_row(100_000);
        assert!((16.0 + 28.0..16.0 + 40.0).contains(&hot), "{hot:.1} bytes per row under 100,000 rows a key");
        assert!(hot > short + 4.0, "rows under hot keys are indexed: {hot:.1} against {short:.1}");
    }
}
