//! [`Merge`]: a k-way merge of sorted streams whose memory is known before it starts.
//!
//! Each input is a stream of sorted batches paired with their sort keys in Arrow's row format.
//! A loser tree picks the next row; output batches are assembled with `interleave` and hold a
//! fixed number of rows (chosen by the caller from the row width, so an output batch has a known
//! size in bytes). At any moment the merge holds each input's current batch, the batches that
//! rows of the output being built come from, and the output itself: with inputs whose batches are
//! at most `B` bytes and output batches of about `B`, that is about `2·B` per input plus `B`,
//! which the caller reserves before it starts (see `sort.rs`).
//!
//! Output columns of view types (`Utf8View`, `BinaryView`) are compacted: interleaved views
//! point into the buffers of every batch they came from, which would keep those alive and make
//! the output look (and spill) as large as all of them.

use datafusion::arrow::array::{Array, ArrayRef, BinaryViewArray, RecordBatch, StringViewArray};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::Rows;
use datafusion::common::utils::memory::get_record_batch_memory_size;
use datafusion::error::Result;
use datafusion::execution::memory_pool::MemoryReservation;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A sorted input: batches with their sort keys as rows.
pub(crate) type SortedStream = BoxStream<'static, Result<(RecordBatch, Rows)>>;

struct Cursor {
    /// Index into `Merge::slots` of the batch this cursor reads.
    slot: usize,
    rows: Rows,
    pos: usize,
}

/// A k-way merge of sorted inputs into batches of `out_rows` rows (the last may be shorter),
/// stopping after `fetch` rows if given. See the module docs.
pub(crate) struct Merge {
    inputs: Vec<SortedStream>,
    cursors: Vec<Option<Cursor>>,
    /// Inputs that need their next batch before the tree can move on.
    loading: Vec<usize>,
    exhausted: Vec<bool>,
    /// Loser tree over the inputs: `tree[0]` is the winner, the rest the losers of each match.
    tree: Vec<usize>,
    tree_built: bool,
    /// The winner moved to a new batch (or ran out): replay its matches once it is loaded.
    pending_update: bool,
    /// Batches that rows of the pending output (or a current cursor) come from.
    slots: Vec<RecordBatch>,
    pending: Vec<(usize, usize)>,
    out_rows: usize,
    remaining: usize,
    done: bool,
    /// Memory charged for the inputs' batches (in-memory runs), released input by input as each
    /// is used up, with the bytes of each input.
    release: Option<(MemoryReservation, Vec<usize>)>,
    /// With a byte target, `out_rows` follows the widest rows seen: about this many bytes per
    /// output batch, never more than the rows given to `new`.
    out_bytes: Option<(usize, usize)>,
    widest: usize,
}

impl Merge {
    pub fn new(inputs: Vec<SortedStream>, out_rows: usize, fetch: Option<usize>) -> Self {
        let k = inputs.len();
        Self {
            inputs,
            cursors: (0..k).map(|_| None).collect(),
            loading: (0..k).collect(),
            exhausted: vec![false; k],
            tree: Vec::new(),
            tree_built: false,
            pending_update: false,
            slots: Vec::new(),
            pending: Vec::new(),
            out_rows: out_rows.max(1),
            remaining: fetch.unwrap_or(usize::MAX),
            done: k == 0,
            release: None,
            out_bytes: None,
            widest: 1,
        }
    }

    /// Output batches of about `bytes` (at most the `out_rows` given to `new`), from the width
    /// of the input rows seen so far and the size of the batches built.
    pub fn with_out_bytes(mut self, bytes: usize) -> Self {
        self.out_bytes = Some((bytes, self.out_rows));
        self
    }

    /// Shrinks `reservation` by `sizes[i]` when input `i` is used up.
    pub fn releasing(mut self, reservation: MemoryReservation, sizes: Vec<usize>) -> Self {
        self.release = Some((reservation, sizes));
        self
    }

    /// `a` sorts after `b` (an exhausted input after everything; ties by input index, so the
    /// merge is stable).
    fn is_gt(&self, a: usize, b: usize) -> bool {
        match (&self.cursors[a], &self.cursors[b]) {
            (None, _) => true,
            (_, None) => false,
            (Some(x), Some(y)) => match x.rows.row(x.pos).cmp(&y.rows.row(y.pos)) {
                std::cmp::Ordering::Equal => a > b,
                o => o == std::cmp::Ordering::Greater,
            },
        }
    }

    fn leaf(&self, i: usize) -> usize {
        (self.inputs.len() + i) / 2
    }

    fn build_tree(&mut self) {
        let k = self.inputs.len();
        self.tree = vec![usize::MAX; k];
        for i in 0..k {
            let mut winner = i;
            let mut node = self.leaf(i);
            while node != 0 && self.tree[node] != usize::MAX {
                let challenger = self.tree[node];
                if self.is_gt(winner, challenger) {
                    self.tree[node] = winner;
                    winner = challenger;
                }
                node /= 2;
            }
            self.tree[node] = winner;
        }
        self.tree_built = true;
    }

    /// Replays the matches of the winner after it moved on.
    fn update_tree(&mut self) {
        let mut winner = self.tree[0];
        let mut node = self.leaf(winner);
        while node != 0 {
            let challenger = self.tree[node];
            if self.is_gt(winner, challenger) {
                self.tree[node] = winner;
                winner = challenger;
            }
            node /= 2;
        }
        self.tree[0] = winner;
    }

    /// Polls every input that needs a batch; `Pending` if one is not ready.
    ///
    /// Every input is polled, not only up to the first that is pending: an input may be unable
    /// to progress until another one is polled (a `CollectLeft` hash join's probe partitions wait
    /// for each other to report their dynamic filter's bounds), as DataFusion's own merge drives
    /// every input at once.
    fn load(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut pending = false;
        let mut k = self.loading.len();
        while k > 0 {
            k -= 1;
            let i = self.loading[k];
            loop {
                match self.inputs[i].poll_next_unpin(cx) {
                    Poll::Pending => {
                        pending = true;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Some(Ok((batch, rows)))) => {
                        if batch.num_rows() == 0 {
                            continue;
                        }
                        // A batch of a few rows says little about their width (one read back
                        // from a file takes a whole read buffer): only fuller ones count.
                        if let (Some((bytes, most)), true) = (self.out_bytes, batch.num_rows() >= 64) {
                            let width = get_record_batch_memory_size(&batch) / batch.num_rows();
                            self.widest = self.widest.max(width);
                            self.out_rows = (bytes / self.widest).clamp(1, most);
                        }
                        self.slots.push(batch);
                        self.cursors[i] = Some(Cursor { slot: self.slots.len() - 1, rows, pos: 0 });
                        self.loading.remove(k);
                        break;
                    }
                    Poll::Ready(None) => {
                        if let Some((r, sizes)) = &mut self.release {
                            r.shrink(sizes[i].min(r.size()));
                        }
                        self.exhausted[i] = true;
                        self.cursors[i] = None;
                        self.loading.remove(k);
                        break;
                    }
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Builds the output batch from the pending rows and drops the batches no cursor needs.
    fn emit(&mut self) -> Result<RecordBatch> {
        let batches: Vec<&RecordBatch> = self.slots.iter().collect();
        let out = compact_views(interleave_record_batch(&batches, &self.pending)?)?;
        self.pending.clear();
        if let (Some((bytes, most)), true) = (self.out_bytes, out.num_rows() >= 64) {
            // Rows wider in the output than their inputs suggested: fewer per batch from now on.
            let size = get_record_batch_memory_size(&out);
            if size > bytes + bytes / 2 {
                self.out_rows = (self.out_rows.saturating_mul(bytes) / size).clamp(1, most);
            }
        }
        let mut kept = Vec::with_capacity(self.cursors.len());
        for c in self.cursors.iter_mut().flatten() {
            kept.push(self.slots[c.slot].clone());
            c.slot = kept.len() - 1;
        }
        self.slots = kept;
        Ok(out)
    }

    fn poll_merge(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordBatch>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.load(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(())) => {}
            }
            if !self.tree_built {
                self.build_tree();
            } else if self.pending_update {
                self.pending_update = false;
                self.update_tree();
            }
            while self.pending.len() < self.out_rows && self.remaining > 0 {
                let w = self.tree[0];
                let Some(c) = self.cursors[w].as_mut() else { break };
                self.pending.push((c.slot, c.pos));
                self.remaining -= 1;
                c.pos += 1;
                if c.pos == c.rows.num_rows() {
                    // Its batch is used up: fetch the next before the tree can replay.
                    self.cursors[w] = None;
                    self.loading.push(w);
                    self.pending_update = true;
                    break;
                }
                self.update_tree();
            }
            let finished = self.remaining == 0 || (self.loading.is_empty() && self.cursors.iter().all(Option::is_none));
            if finished {
                self.done = true;
            }
            if self.pending.len() >= self.out_rows || (finished && !self.pending.is_empty()) {
                return Poll::Ready(Some(self.emit()));
            }
        }
    }
}

impl Stream for Merge {
    type Item = Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_merge(cx)
    }
}

/// `batch` with every view column that points into much more buffer than it uses rewritten
/// to own just its bytes (what `take`, `slice` and `interleave` leave behind).
pub(crate) fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    let mut changed = false;
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|a| {
            let compacted: Option<ArrayRef> = match a.data_type() {
                DataType::Utf8View => {
                    let v = a.as_any().downcast_ref::<StringViewArray>();
                    v.filter(|v| wasteful(v.data_buffers().iter().map(|b| b.len()).sum(), v.total_buffer_bytes_used()))
                        .map(|v| Arc::new(v.gc()) as ArrayRef)
                }
                DataType::BinaryView => {
                    let v = a.as_any().downcast_ref::<BinaryViewArray>();
                    v.filter(|v| wasteful(v.data_buffers().iter().map(|b| b.len()).sum(), v.total_buffer_bytes_used()))
                        .map(|v| Arc::new(v.gc()) as ArrayRef)
                }
                _ => None,
            };
            match compacted {
                Some(c) => {
                    changed = true;
                    c
                }
                None => a.clone(),
            }
        })
        .collect();
    if !changed {
        return Ok(batch);
    }
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// More than half again the bytes used: compacting costs a copy of `used` bytes, and an array
/// that points into larger buffers is charged, spilled and kept alive as all of them (for small
/// batches an absolute slack would dominate: 32KiB of it made runs 9x their data at 64MiB).
fn wasteful(held: usize, used: usize) -> bool {
    held > used + used / 2 + 4096
}
