//! Reading intermediates back as DataFusion tables, without copying:
//! - memory tier: a `MemTable` over the same `Arc`'d batches;
//! - IPC: the file is memory-mapped and decoded in place (arrow's `FileDecoder` over buffers that
//!   point into the mapping), so pages load on demand and count as page cache, not heap;
//! - Parquet: DataFusion's Parquet source, with projection and predicate pushdown.
//!
//! Memory and IPC tables hold the batches (and through them the memory map) themselves. A Parquet
//! table is read by path, so the caller keeps its `Arc<Intermediate>` for as long as it queries
//! the table (one clone per consumer step); the file is deleted when the last clone drops.

use crate::error::{Error, Result};
use crate::store::{Intermediate, Tier};
use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::root_as_footer;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

/// Registers `intermediate` as table `name` in `ctx`, split into up to `partitions` partitions.
pub async fn register(ctx: &SessionContext, name: &str, intermediate: &Arc<Intermediate>, partitions: usize) -> Result<()> {
    match intermediate.info().tier {
        Tier::Parquet => {
            let path = intermediate.path().ok_or_else(|| Error::Invalid("parquet intermediate without a file".into()))?;
            ctx.register_parquet(name, path.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
        }
        _ => {
            let table = table(intermediate, partitions)?;
            ctx.register_table(name, table)?;
        }
    }
    Ok(())
}

/// A `MemTable` over a memory or IPC intermediate (no copy).
pub fn table(intermediate: &Arc<Intermediate>, partitions: usize) -> Result<Arc<dyn TableProvider>> {
    let batches = match intermediate.batches() {
        Some(b) => b.to_vec(), // clones Arcs, not data
        None => {
            let path = intermediate.path().ok_or_else(|| Error::Invalid("intermediate without data".into()))?;
            mmap_ipc(path)?
        }
    };
    let n = partitions.clamp(1, batches.len().max(1));
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % n].push(b);
    }
    Ok(Arc::new(MemTable::try_new(intermediate.schema().clone(), parts)?))
}

/// Reads every batch of an Arrow IPC file through a memory map, zero-copy.
pub fn mmap_ipc(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is ours (mode 0600 in our run directory) and is not modified while mapped;
    // deleting it keeps the mapping valid.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let len = mmap.len();
    let bad = |what: &str| Error::Invalid(format!("{}: not an Arrow IPC file ({what})", path.display()));
    if len < 10 {
        return Err(bad("too short"));
    }
    let ptr = NonNull::new(mmap.as_ptr() as *mut u8).ok_or_else(|| bad("empty mapping"))?;
    // SAFETY: `ptr` is valid for `len` bytes for as long as the `Mmap` lives, which the buffer owns.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(mmap)) };
    let trailer: [u8; 10] = buffer[len - 10..].try_into().map_err(|_| bad("trailer"))?;
    let footer_len = read_footer_length(trailer)?;
    let footer = root_as_footer(&buffer[len - 10 - footer_len..len - 10]).map_err(|_| bad("footer"))?;
    let schema = Arc::new(fb_to_schema(footer.schema().ok_or_else(|| bad("schema"))?));
    let mut decoder = FileDecoder::new(schema, footer.version());
    for block in footer.dictionaries().iter().flatten() {
        let block_len = block.bodyLength() as usize + block.metaDataLength() as usize;
        let data = buffer.slice_with_length(block.offset() as usize, block_len);
        decoder.read_dictionary(block, &data)?;
    }
    let mut batches = Vec::new();
    if let Some(blocks) = footer.recordBatches() {
        for block in blocks {
            let block_len = block.bodyLength() as usize + block.metaDataLength() as usize;
            let data = buffer.slice_with_length(block.offset() as usize, block_len);
            if let Some(batch) = decoder.read_record_batch(block, &data)? {
                batches.push(batch);
            }
        }
    }
    Ok(batches)
}
