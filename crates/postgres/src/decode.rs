//! Reading PostgreSQL's binary COPY format into Arrow batches.
//!
//! The stream is a header, then one tuple per row (a field count, then each field as a length
//! and its bytes, -1 for NULL), then a trailer (-1). Chunks from the server split tuples
//! anywhere, so a tuple is decoded only once all of it has arrived.

use crate::types::ReadAs;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use bytes::{Buf, BytesMut};
use std::sync::Arc;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;

enum Column {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Text(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Time(Time64MicrosecondBuilder),
    Decimal(Decimal128Builder, i8),
    NumericFloat(Float64Builder),
}

impl Column {
    fn new(kind: ReadAs, schema_type: &arrow::datatypes::DataType) -> Column {
        match kind {
            ReadAs::Bool => Column::Bool(BooleanBuilder::new()),
            ReadAs::Int2 => Column::Int2(Int16Builder::new()),
            ReadAs::Int4 => Column::Int4(Int32Builder::new()),
            ReadAs::Int8 => Column::Int8(Int64Builder::new()),
            ReadAs::Float4 => Column::Float4(Float32Builder::new()),
            ReadAs::Float8 => Column::Float8(Float64Builder::new()),
            ReadAs::Text | ReadAs::Bpchar | ReadAs::CastText => Column::Text(StringBuilder::new()),
            ReadAs::Bytea => Column::Bytea(BinaryBuilder::new()),
            ReadAs::Date => Column::Date(Date32Builder::new()),
            ReadAs::Timestamp | ReadAs::TimestampTz => {
                Column::Timestamp(TimestampMicrosecondBuilder::new().with_data_type(schema_type.clone()))
            }
            ReadAs::Time => Column::Time(Time64MicrosecondBuilder::new()),
            ReadAs::Decimal(_, s) => Column::Decimal(Decimal128Builder::new().with_data_type(schema_type.clone()), s),
            ReadAs::NumericFloat => Column::NumericFloat(Float64Builder::new()),
        }
    }

    fn null(&mut self) {
        match self {
            Column::Bool(b) => b.append_null(),
            Column::Int2(b) => b.append_null(),
            Column::Int4(b) => b.append_null(),
            Column::Int8(b) => b.append_null(),
            Column::Float4(b) => b.append_null(),
            Column::Float8(b) | Column::NumericFloat(b) => b.append_null(),
            Column::Text(b) => b.append_null(),
            Column::Bytea(b) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Timestamp(b) => b.append_null(),
            Column::Time(b) => b.append_null(),
            Column::Decimal(b, _) => b.append_null(),
        }
    }

    fn value(&mut self, v: &[u8]) -> Result<(), String> {
        match self {
            Column::Bool(b) => b.append_value(be::<1>(v)?[0] != 0),
            Column::Int2(b) => b.append_value(i16::from_be_bytes(be(v)?)),
            Column::Int4(b) => b.append_value(i32::from_be_bytes(be(v)?)),
            Column::Int8(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            Column::Float4(b) => b.append_value(f32::from_be_bytes(be(v)?)),
            Column::Float8(b) => b.append_value(f64::from_be_bytes(be(v)?)),
            Column::Text(b) => {
                b.append_value(std::str::from_utf8(v).map_err(|_| "text that is not UTF-8".to_string())?)
            }
            Column::Bytea(b) => b.append_value(v),
            Column::Date(b) => {
                let days = i32::from_be_bytes(be(v)?);
                // ±infinity (i32::MAX/MIN) has no Arrow date: read as NULL.
                match days.checked_add(EPOCH_DAYS) {
                    Some(d) if days != i32::MAX && days != i32::MIN => b.append_value(d),
                    _ => b.append_null(),
                }
            }
            Column::Timestamp(b) => {
                let us = i64::from_be_bytes(be(v)?);
                match us.checked_add(EPOCH_MICROS) {
                    Some(t) if us != i64::MAX && us != i64::MIN => b.append_value(t),
                    _ => b.append_null(),
                }
            }
            Column::Time(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            Column::Decimal(b, scale) => match numeric(v, *scale)? {
                Some(x) => b.append_value(x),
                None => b.append_null(),
            },
            Column::NumericFloat(b) => b.append_value(numeric_f64(v)?),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Int2(b) => Arc::new(b.finish()),
            Column::Int4(b) => Arc::new(b.finish()),
            Column::Int8(b) => Arc::new(b.finish()),
            Column::Float4(b) => Arc::new(b.finish()),
            Column::Float8(b) | Column::NumericFloat(b) => Arc::new(b.finish()),
            Column::Text(b) => Arc::new(b.finish()),
            Column::Bytea(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Timestamp(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
            Column::Decimal(b, _) => Arc::new(b.finish()),
        }
    }

    fn allocated(&self) -> usize {
        match self {
            Column::Bool(b) => b.capacity() / 8,
            Column::Int2(b) => b.capacity() * 2,
            Column::Int4(b) => b.capacity() * 4,
            Column::Date(b) => b.capacity() * 4,
            Column::Int8(b) => b.capacity() * 8,
            Column::Timestamp(b) => b.capacity() * 8,
            Column::Time(b) => b.capacity() * 8,
            Column::Float4(b) => b.capacity() * 4,
            Column::Float8(b) | Column::NumericFloat(b) => b.capacity() * 8,
            Column::Text(b) => b.values_slice().len() + b.offsets_slice().len() * 4,
            Column::Bytea(b) => b.values_slice().len() + b.offsets_slice().len() * 4,
            Column::Decimal(b, _) => b.capacity() * 16,
        }
    }
}

fn trim_blanks(v: &[u8]) -> &[u8] {
    let end = v.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    &v[..end]
}

/// Types read as text whose binary form CDC turns into the same text as `::text`.
pub(crate) const CDC_TEXT_TYPES: [(u32, &str); 4] = [(2950, "uuid"), (114, "json"), (3802, "jsonb"), (1043, "varchar")];

/// The `::text` form of a binary value of a text-read type (see [`CDC_TEXT_TYPES`]).
fn cast_text(oid: u32, v: &[u8]) -> Result<String, String> {
    let utf8 = |b: &[u8]| std::str::from_utf8(b).map(str::to_string).map_err(|_| "text that is not UTF-8".to_string());
    match oid {
        2950 if v.len() == 16 => {
            let h: String = v.iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        114 | 1043 => utf8(v),
        3802 if v.first() == Some(&1) => utf8(&v[1..]),
        _ => Err(format!("a value of type oid {oid} that CDC cannot read")),
    }
}

/// A fixed-size field's bytes, or an error when it has another length.
fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into().map_err(|_| format!("a field of {} bytes where {N} were expected", v.len()))
}

/// A `numeric` in binary form as an integer scaled by 10^`scale`; `None` for NaN.
fn numeric(v: &[u8], scale: i8) -> Result<Option<i128>, String> {
    let (digits, weight, sign) = numeric_parts(v)?;
    if sign == 0xC000 {
        return Ok(None);
    }
    if sign != 0 && sign != 0x4000 {
        return Err("an infinite numeric cannot be read as a decimal".into());
    }
    let overflow = || "a numeric too large for its declared precision".to_string();
    let mut acc: i128 = 0;
    for d in &digits {
        acc = acc.checked_mul(10_000).and_then(|a| a.checked_add(*d as i128)).ok_or_else(overflow)?;
    }
    // acc × 10000^(weight - ndigits + 1), then × 10^scale.
    let exp10 = 4 * (weight as i32 - digits.len() as i32 + 1) + scale as i32;
    let value = if exp10 >= 0 {
        10i128.checked_pow(exp10 as u32).and_then(|m| acc.checked_mul(m)).ok_or_else(overflow)?
    } else {
        acc / 10i128.checked_pow((-exp10) as u32).unwrap_or(i128::MAX)
    };
    Ok(Some(if sign == 0x4000 { -value } else { value }))
}

/// A `numeric` in binary form as the nearest `f64`.
fn numeric_f64(v: &[u8]) -> Result<f64, String> {
    let (digits, weight, sign) = numeric_parts(v)?;
    Ok(match sign {
        0xC000 => f64::NAN,
        0xD000 => f64::INFINITY,
        0xF000 => f64::NEG_INFINITY,
        _ => {
            let mut x = 0f64;
            for (i, d) in digits.iter().enumerate() {
                x += *d as f64 * 10_000f64.powi(weight as i32 - i as i32);
            }
            if sign == 0x4000 {
                -x
            } else {
                x
            }
        }
    })
}

fn numeric_parts(mut v: &[u8]) -> Result<(Vec<i16>, i16, u16), String> {
    if v.len() < 8 {
        return Err("a numeric field shorter than its header".into());
    }
    let n = v.get_i16() as usize;
    let weight = v.get_i16();
    let sign = v.get_u16();
    let _dscale = v.get_u16();
    if v.len() != 2 * n {
        return Err("a numeric field of the wrong length".into());
    }
    Ok(((0..n).map(|_| v.get_i16()).collect(), weight, sign))
}

/// Decodes a binary COPY stream into batches of `schema`.
pub(crate) struct CopyDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    buf: BytesMut,
    header_done: bool,
    finished: bool,
    rows: usize,
}

impl CopyDecoder {
    pub(crate) fn new(schema: SchemaRef, kinds: &[ReadAs]) -> Self {
        let columns = kinds.iter().zip(schema.fields()).map(|(k, f)| Column::new(*k, f.data_type())).collect();
        Self { schema, columns, buf: BytesMut::new(), header_done: false, finished: false, rows: 0 }
    }

    /// Rows decoded since the last batch.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the trailer was read.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// Bytes held: the undecoded tail and the builders' values.
    pub(crate) fn memory(&self) -> usize {
        self.buf.capacity() + self.columns.iter().map(Column::allocated).sum::<usize>()
    }

    /// Adds a chunk and decodes every complete tuple in it, up to `max_rows` rows in total.
    /// Returns whether input is left over (the caller takes a batch and calls again with `&[]`).
    pub(crate) fn push(&mut self, chunk: &[u8], max_rows: usize) -> Result<bool, String> {
        self.buf.extend_from_slice(chunk);
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(false);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err("not a binary COPY stream".into());
            }
            let ext =
                u32::from_be_bytes(self.buf[SIGNATURE.len() + 4..SIGNATURE.len() + 8].try_into().expect("4 bytes"))
                    as usize;
            if self.buf.len() < SIGNATURE.len() + 8 + ext {
                return Ok(false);
            }
            self.buf.advance(SIGNATURE.len() + 8 + ext);
            self.header_done = true;
        }
        let ncols = self.columns.len();
        let mut pos = 0;
        while !self.finished && self.rows < max_rows {
            let b = &self.buf[pos..];
            if b.len() < 2 {
                break;
            }
            let count = i16::from_be_bytes([b[0], b[1]]);
            if count == -1 {
                self.finished = true;
                pos += 2;
                break;
            }
            if count as usize != ncols {
                return Err(format!("a row of {count} fields where {ncols} were expected"));
            }
            // The whole tuple must be here before any of it is decoded.
            let mut end = 2;
            let mut complete = true;
            for _ in 0..ncols {
                if b.len() < end + 4 {
                    complete = false;
                    break;
                }
                let len = i32::from_be_bytes(b[end..end + 4].try_into().expect("4 bytes"));
                end += 4 + len.max(0) as usize;
                if b.len() < end {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
            let mut at = 2;
            for col in &mut self.columns {
                let len = i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
                at += 4;
                if len < 0 {
                    col.null();
                } else {
                    let v = &b[at..at + len as usize];
                    at += len as usize;
                    col.value(v)?;
                }
            }
            pos += end;
            self.rows += 1;
        }
        self.buf.advance(pos);
        Ok(self.rows >= max_rows && !self.buf.is_empty())
    }

    /// Appends one row given field by field (`None`: NULL), each in its type's binary form, as
    /// logical replication's binary `pgoutput` sends them. `char(n)` loses its trailing blanks
    /// (as the COPY path's `::text` does); the few text-read types CDC follows are turned into
    /// their text form here.
    pub(crate) fn push_row(&mut self, fields: &[Option<&[u8]>], kinds: &[ReadAs], oids: &[u32]) -> Result<(), String> {
        if fields.len() != self.columns.len() {
            return Err(format!("a row of {} fields where {} were expected", fields.len(), self.columns.len()));
        }
        for (i, (col, v)) in self.columns.iter_mut().zip(fields).enumerate() {
            match v {
                None => col.null(),
                Some(v) => match kinds[i] {
                    ReadAs::Bpchar => col.value(trim_blanks(v))?,
                    ReadAs::CastText => col.value(cast_text(oids[i], v)?.as_bytes())?,
                    _ => col.value(v)?,
                },
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows decoded so far as a batch (the builders start again empty).
    pub(crate) fn take(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(digits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((digits.len() as i16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics() {
        // 12345.67 = [1, 2345, 6700], weight 1
        assert_eq!(numeric(&num(&[1, 2345, 6700], 1, 0, 2), 2).unwrap(), Some(1_234_567));
        assert_eq!(numeric(&num(&[500], -1, 0x4000, 2), 2).unwrap(), Some(-5)); // -0.05
        assert_eq!(numeric(&num(&[], 0, 0, 0), 2).unwrap(), Some(0));
        assert_eq!(numeric(&num(&[], 0, 0xC000, 0), 2).unwrap(), None);
        assert!((numeric_f64(&num(&[1, 2345, 6700], 1, 0, 2)).unwrap() - 12345.67).abs() < 1e-9);
    }
}
