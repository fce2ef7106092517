//! [`StateCodec`]: rows as the bytes a join keeps of them — compared only for equality, never
//! for order, so they need not be `arrow-row`'s order-preserving bytes.
//!
//! `arrow-row` spends a null byte on every value, 17 bytes on any `Decimal128`, 9 on any
//! `Int64`, and pads strings to blocks of 8 or 32 bytes (a 25-byte name takes 37). State kept
//! for equality can be smaller: a row here is one bitmap of its NULLs (a bit per column) and
//! then each value that is not NULL —
//!
//! ```text
//!   integers, dates, times, timestamps, durations, decimals   zigzag varint (1 byte below 64)
//!   floats, intervals, 256-bit decimals                       their bytes as they are
//!   booleans                                                  one byte
//!   strings, binaries                                         varint length, then the bytes
//! ```
//!
//! Each value has one encoding, so equal rows have equal bytes (what the arrangement compares).
//! Floats keep their bits: `-0.0` and `0.0`, or two NaNs with other payloads, are different
//! rows, as they are under `arrow-row`. A schema with any other type (lists, structs,
//! dictionaries, views) is encoded with `arrow-row` as before.

use crate::error::Result;
use crate::zset::RowCodec;
use arrow::array::{Array, ArrayData, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::buffer::{Buffer, MutableBuffer, NullBuffer};
use arrow::datatypes::{DataType, IntervalUnit, SchemaRef};
use std::sync::Arc;

/// How one column's values are written.
#[derive(Clone, Copy)]
enum Kind {
    /// A two's-complement integer of this many bytes, as a zigzag varint.
    Int(usize),
    /// This many bytes as they are.
    Raw(usize),
    Bool,
    /// Offsets of 4 bytes (or 8, `large`), then the values.
    Bytes {
        large: bool,
    },
    Null,
}

fn kind(t: &DataType) -> Option<Kind> {
    use DataType::*;
    Some(match t {
        Int8 | UInt8 => Kind::Int(1),
        Int16 | UInt16 => Kind::Int(2),
        Int32 | UInt32 | Date32 | Time32(_) | Interval(IntervalUnit::YearMonth) | Decimal32(..) => Kind::Int(4),
        Int64 | UInt64 | Date64 | Time64(_) | Timestamp(..) | Duration(_) | Decimal64(..) => Kind::Int(8),
        Decimal128(..) => Kind::Int(16),
        Float16 => Kind::Raw(2),
        Float32 => Kind::Raw(4),
        Float64 | Interval(IntervalUnit::DayTime) => Kind::Raw(8),
        Interval(IntervalUnit::MonthDayNano) => Kind::Raw(16),
        Decimal256(..) => Kind::Raw(32),
        Boolean => Kind::Bool,
        Utf8 | Binary => Kind::Bytes { large: false },
        LargeUtf8 | LargeBinary => Kind::Bytes { large: true },
        Null => Kind::Null,
        _ => return None,
    })
}

/// Rows of one schema to and from the bytes state keeps: compact where every column's type
/// allows it, `arrow-row` otherwise. See the [module docs](self).
pub(crate) struct StateCodec {
    form: Form,
    /// What decoding adds to a row's encoded bytes, at most (see [`StateCodec::decoded_bound`]).
    slots: usize,
}

enum Form {
    Compact { schema: SchemaRef, kinds: Vec<Kind> },
    Row(RowCodec),
}

/// Encoded rows, one byte string each.
pub(crate) enum Encoded {
    Compact { bytes: Vec<u8>, ends: Vec<usize> },
    Row(arrow::row::Rows),
}

impl Encoded {
    /// Row `i`'s bytes.
    pub(crate) fn row(&self, i: usize) -> &[u8] {
        match self {
            Encoded::Compact { bytes, ends } => &bytes[if i == 0 { 0 } else { ends[i - 1] }..ends[i]],
            Encoded::Row(rows) => rows.row(i).data(),
        }
    }
}

impl StateCodec {
    pub(crate) fn new(schema: SchemaRef) -> Result<StateCodec> {
        let slots = schema
            .fields()
            .iter()
            .map(|f| match kind(f.data_type()) {
                Some(Kind::Int(w) | Kind::Raw(w)) => w + 1,
                Some(Kind::Bytes { .. }) => 9,
                _ => 1,
            })
            .sum();
        let kinds: Option<Vec<Kind>> = schema.fields().iter().map(|f| kind(f.data_type())).collect();
        let form = match kinds {
            Some(kinds) => Form::Compact { schema, kinds },
            None => Form::Row(RowCodec::new(schema)?),
        };
        Ok(StateCodec { form, slots })
    }

    /// Every row of `batch` (whose columns are this codec's).
    pub(crate) fn encode_batch(&self, batch: &RecordBatch) -> Result<Encoded> {
        match &self.form {
            Form::Row(codec) => Ok(Encoded::Row(codec.encode_batch(batch)?)),
            Form::Compact { kinds, .. } => Ok(encode(kinds, batch.columns(), batch.num_rows())),
        }
    }

    /// Every row of `columns` (one per field, at least one).
    pub(crate) fn encode(&self, columns: &[ArrayRef]) -> Result<Encoded> {
        match &self.form {
            Form::Row(codec) => Ok(Encoded::Row(codec.encode(columns)?)),
            Form::Compact { kinds, .. } => Ok(encode(kinds, columns, columns.first().map_or(0, |c| c.len()))),
        }
    }

    /// At most the bytes a row of `encoded` bytes takes once decoded into arrays: its bytes
    /// plus each column's fixed width, offset and validity (a compact varint of 1 byte becomes
    /// 8 or 16, a NULL of no bytes a whole slot). What a join reserves before decoding rows.
    pub(crate) fn decoded_bound(&self, encoded: usize) -> usize {
        encoded + self.slots
    }

    /// The most bytes any row takes encoded, when every column has a bounded width (None with
    /// strings, binaries or `arrow-row`): what a row rewritten with new values may grow to.
    pub(crate) fn max_row_len(&self) -> Option<usize> {
        let Form::Compact { kinds, .. } = &self.form else { return None };
        let values = kinds
            .iter()
            .map(|k| match *k {
                // A zigzag of 8w bits, 7 bits a byte.
                Kind::Int(w) => Some((8 * w).div_ceil(7)),
                Kind::Raw(w) => Some(w),
                Kind::Bool => Some(1),
                Kind::Null => Some(0),
                Kind::Bytes { .. } => None,
            })
            .sum::<Option<usize>>()?;
        Some(kinds.len().div_ceil(8) + values)
    }

    /// The schema of the rows.
    pub(crate) fn schema(&self) -> &SchemaRef {
        match &self.form {
            Form::Compact { schema, .. } => schema,
            Form::Row(codec) => codec.schema(),
        }
    }

    /// One row's bytes as `(column=value, ...)`, for error messages.
    pub(crate) fn describe(&self, row: &[u8]) -> String {
        match self.decode([row]) {
            Ok(batch) => crate::zset::describe_row(&batch),
            Err(_) => "(a row)".into(),
        }
    }

    /// Rows encoded by this codec, as a batch of its schema (every column nullable).
    pub(crate) fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        let (schema, kinds) = match &self.form {
            Form::Row(codec) => return codec.decode(rows),
            Form::Compact { schema, kinds } => (schema, kinds),
        };
        let mask = kinds.len().div_ceil(8);
        let mut cols: Vec<Column> = kinds
            .iter()
            .map(|_| Column { valid: Vec::new(), values: MutableBuffer::new(0), ends: Vec::new(), bools: Vec::new() })
            .collect();
        let mut n = 0;
        for row in rows {
            let mut at = mask;
            for (c, (col, k)) in cols.iter_mut().zip(kinds).enumerate() {
                let null = row[c / 8] >> (c % 8) & 1 == 1;
                col.valid.push(!null);
                match *k {
                    Kind::Int(w) => {
                        let v = if null { 0 } else { read_varint(row, &mut at) };
                        let v = ((v >> 1) as i128) ^ -((v & 1) as i128);
                        col.values.extend_from_slice(&v.to_le_bytes()[..w]);
                    }
                    Kind::Raw(w) if null => col.values.resize(col.values.len() + w, 0),
                    Kind::Raw(w) => {
                        col.values.extend_from_slice(&row[at..at + w]);
                        at += w;
                    }
                    Kind::Bool => {
                        col.bools.push(!null && row[at] == 1);
                        at += usize::from(!null);
                    }
                    Kind::Bytes { .. } => {
                        if !null {
                            let len = read_varint(row, &mut at) as usize;
                            col.values.extend_from_slice(&row[at..at + len]);
                            at += len;
                        }
                        col.ends.push(col.values.len());
                    }
                    Kind::Null => {}
                }
            }
            n += 1;
        }
        let columns = schema
            .fields()
            .iter()
            .zip(kinds)
            .zip(cols)
            .map(|((f, k), col)| col.finish(f.data_type(), *k, n))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(crate::zset::relax_nullability(schema), columns, &options)?)
    }
}

/// The compact rows of `columns` (of `kinds`), `n` of them.
fn encode(kinds: &[Kind], columns: &[ArrayRef], n: usize) -> Encoded {
    let mask = kinds.len().div_ceil(8);
    let data: Vec<ArrayData> = columns.iter().map(|c| c.to_data()).collect();
    let mut bytes = Vec::with_capacity(n * (mask + 8 * kinds.len()));
    let mut ends = Vec::with_capacity(n);
    for i in 0..n {
        let start = bytes.len();
        bytes.resize(start + mask, 0);
        for (c, (d, k)) in data.iter().zip(kinds).enumerate() {
            if matches!(k, Kind::Null) || d.is_null(i) {
                bytes[start + c / 8] |= 1 << (c % 8);
                continue;
            }
            let at = d.offset() + i;
            match *k {
                Kind::Int(w) => {
                    let v = &d.buffers()[0].as_slice()[at * w..at * w + w];
                    let mut b = [if v[w - 1] & 0x80 != 0 { 0xff } else { 0 }; 16];
                    b[..w].copy_from_slice(v);
                    let v = i128::from_le_bytes(b);
                    put_varint(&mut bytes, ((v << 1) ^ (v >> 127)) as u128);
                }
                Kind::Raw(w) => bytes.extend_from_slice(&d.buffers()[0].as_slice()[at * w..at * w + w]),
                Kind::Bool => bytes.push(d.buffers()[0].as_slice()[at / 8] >> (at % 8) & 1),
                Kind::Bytes { large } => {
                    let (from, to) = if large {
                        let o: &[i64] = d.buffers()[0].typed_data();
                        (o[at] as usize, o[at + 1] as usize)
                    } else {
                        let o: &[i32] = d.buffers()[0].typed_data();
                        (o[at] as usize, o[at + 1] as usize)
                    };
                    put_varint(&mut bytes, (to - from) as u128);
                    bytes.extend_from_slice(&d.buffers()[1].as_slice()[from..to]);
                }
                Kind::Null => {}
            }
        }
        ends.push(bytes.len());
    }
    Encoded::Compact { bytes, ends }
}

/// One column's values as they are decoded.
struct Column {
    valid: Vec<bool>,
    /// Fixed-width values, or the bytes of strings and binaries (aligned, as arrays need).
    values: MutableBuffer,
    /// Where each string or binary ends in `values`.
    ends: Vec<usize>,
    bools: Vec<bool>,
}

impl Column {
    fn finish(self, t: &DataType, k: Kind, n: usize) -> Result<ArrayRef> {
        let nulls = Some(NullBuffer::from(self.valid)).filter(|b| b.null_count() > 0);
        let data = match k {
            Kind::Null => return Ok(arrow::array::new_null_array(t, n)),
            Kind::Bool => return Ok(Arc::new(BooleanArray::new(self.bools.into(), nulls))),
            Kind::Int(_) | Kind::Raw(_) => {
                ArrayData::builder(t.clone()).len(n).add_buffer(self.values.into()).nulls(nulls)
            }
            Kind::Bytes { large } => {
                let offsets = if large {
                    let o: Vec<i64> = std::iter::once(0).chain(self.ends.iter().map(|&e| e as i64)).collect();
                    Buffer::from_vec(o)
                } else {
                    let o: Vec<i32> = std::iter::once(0).chain(self.ends.iter().map(|&e| e as i32)).collect();
                    Buffer::from_vec(o)
                };
                ArrayData::builder(t.clone()).len(n).add_buffer(offsets).add_buffer(self.values.into()).nulls(nulls)
            }
        };
        Ok(arrow::array::make_array(data.build()?))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u128 {
    let (mut v, mut shift) = (0u128, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        v |= ((b & 0x7f) as u128) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::*;
    use arrow::datatypes::{Field, Schema, TimeUnit};

    /// Every type the compact form covers comes back as it went in, NULLs, extremes and
    /// sliced arrays included, and takes fewer bytes than `arrow-row`.
    #[test]
    fn rows_come_back_as_they_went_in_and_smaller() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i8", DataType::Int8, true),
            Field::new("u64", DataType::UInt64, true),
            Field::new("i64", DataType::Int64, true),
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("dec", DataType::Decimal128(15, 2), true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("lb", DataType::LargeBinary, true),
            Field::new("n", DataType::Null, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int8Array::from(vec![Some(i8::MIN), None, Some(-1), Some(i8::MAX), Some(0)])),
            Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(0), None, Some(1 << 63), Some(7)])),
            Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX), Some(-64), Some(63), None])),
            Arc::new(Date32Array::from(vec![Some(19_000), None, Some(-5), Some(0), Some(1)])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000), None, Some(0), Some(-1), Some(2)])
                    .with_timezone("UTC"),
            ),
            Arc::new(
                Decimal128Array::from(vec![Some(123_456), Some(-99_999_999_999_999), None, Some(0), Some(1)])
                    .with_precision_and_scale(15, 2)
                    .unwrap(),
            ),
            Arc::new(Float64Array::from(vec![Some(-0.0), Some(2.5e300), Some(1.5), None, Some(f64::INFINITY)])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None, Some(true), Some(false)])),
            Arc::new(StringArray::from(vec![Some("Supplier#000000001"), Some(""), None, Some("ü"), Some("x")])),
            Arc::new(LargeBinaryArray::from(vec![Some(&b"\x00\x01"[..]), None, Some(b""), Some(b"z"), Some(b"yy")])),
            Arc::new(NullArray::new(5)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap().slice(1, 4);
        let codec = StateCodec::new(schema.clone()).unwrap();
        assert!(matches!(codec.form, Form::Compact { .. }));
        let rows = codec.encode_batch(&batch).unwrap();
        let back = codec.decode((0..4).map(|i| rows.row(i))).unwrap();
        for (a, b) in back.columns().iter().zip(batch.columns()) {
            assert_eq!(a.to_data(), b.to_data(), "{:?}", a.data_type());
        }
        let arrow_rows = RowCodec::new(schema).unwrap().encode_batch(&batch).unwrap();
        for i in 0..4 {
            assert!(rows.row(i).len() < arrow_rows.row(i).as_ref().len());
        }
        // Equal rows, equal bytes; different rows, different bytes.
        let twice = arrow::compute::concat_batches(&batch.schema(), [&batch, &batch]).unwrap();
        let again = codec.encode_batch(&twice).unwrap();
        for i in 0..4 {
            assert_eq!(again.row(i), rows.row(i));
            assert_eq!(again.row(i + 4), rows.row(i));
            for j in 0..4 {
                assert_eq!(i == j, rows.row(i) == rows.row(j));
            }
        }
    }

    /// Compact rows decode to more bytes than they take (a 1-byte varint becomes an 8-byte
    /// slot): [`StateCodec::decoded_bound`], what a join reserves before decoding, covers the
    /// arrays decoded, where the encoded length alone falls short.
    #[test]
    fn the_decoded_bound_covers_the_decoded_arrays() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(15, 2), true),
            Field::new("day", DataType::Date32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let n = 50_000;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(i % 50)))),
            Arc::new(
                Decimal128Array::from_iter((0..n).map(|i| Some(i as i128 % 100)))
                    .with_precision_and_scale(15, 2)
                    .unwrap(),
            ),
            Arc::new(Date32Array::from_iter((0..n).map(|i| Some((i % 3) as i32)))),
            Arc::new(StringArray::from_iter((0..n).map(|i| (i % 5 != 0).then(|| "ab".repeat(i as usize % 4))))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let codec = StateCodec::new(schema).unwrap();
        let rows = codec.encode_batch(&batch).unwrap();
        let decoded = codec.decode((0..n as usize).map(|i| rows.row(i))).unwrap();
        let real: usize = decoded.columns().iter().map(|c| c.get_buffer_memory_size()).sum();
        let encoded: usize = (0..n as usize).map(|i| rows.row(i).len()).sum();
        let bound: usize = (0..n as usize).map(|i| codec.decoded_bound(rows.row(i).len())).sum();
        assert!(encoded < real, "the encoded length alone would undercount: {encoded} vs {real}");
        // No row is longer than the most a row of bounded widths may take.
        let fixed = StateCodec::new(Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(38, 0), true),
        ])))
        .unwrap();
        let extremes: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![i64::MIN, i64::MAX, -1])),
            Arc::new(Decimal128Array::from(vec![i128::MIN, i128::MAX, 0]).with_precision_and_scale(38, 0).unwrap()),
        ];
        let max = fixed.max_row_len().unwrap();
        let e = fixed.encode(&extremes).unwrap();
        assert!((0..3).all(|i| e.row(i).len() <= max) && e.row(0).len() == max, "max {max}");
        assert_eq!(codec.max_row_len(), None, "a string has no bound");
        assert!(bound >= real, "bound {bound} below the decoded {real} bytes");
        assert!(bound < 2 * real, "bound {bound} far above the decoded {real} bytes");
    }

    /// A type outside the compact form (a list) keeps the whole schema on `arrow-row`.
    #[test]
    fn other_types_keep_arrow_row() {
        let item = Arc::new(Field::new("item", DataType::Int32, true));
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("l", DataType::List(item), true),
        ]));
        assert!(matches!(StateCodec::new(schema).unwrap().form, Form::Row(_)));
    }
}
