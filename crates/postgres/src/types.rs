//! The Arrow ⇄ PostgreSQL type mapping.
//!
//! Binary COPY does no coercion (an `int4` stream into a `bigint` column fails), so a model's
//! column is written as exactly one PostgreSQL type: the table is created with it, and an existing
//! table must have it (or a type with the same binary form, such as `varchar` for `text`).
//! Reading maps each PostgreSQL type to the Arrow type that holds it without loss; types with no
//! such match are read as their text form.

use arrow::datatypes::{DataType, Schema, TimeUnit};
use pgpq::pg_schema::PostgresType;

/// How a model column is written.
#[derive(Debug, Clone, PartialEq)]
pub struct OutColumn {
    /// Column name.
    pub name: String,
    /// The PostgreSQL type it is created as, e.g. `numeric(15,2)`.
    pub ddl: String,
    /// Type OIDs of existing columns that accept its binary form.
    pub accepts: Vec<u32>,
    /// The Arrow type (for messages).
    pub arrow: DataType,
}

/// The columns of `schema` as written by pgpq's encoder (whose column types are `pg`).
pub fn out_columns(schema: &Schema, pg: &pgpq::pg_schema::PostgresSchema) -> Result<Vec<OutColumn>, String> {
    schema
        .fields()
        .iter()
        .zip(&pg.columns)
        .map(|(field, col)| {
            let (ddl, accepts) = pg_type(field.data_type(), &col.data_type).ok_or_else(|| {
                format!("column {:?} ({}) has no PostgreSQL type spillway can write", field.name(), field.data_type())
            })?;
            Ok(OutColumn { name: field.name().clone(), ddl, accepts, arrow: field.data_type().clone() })
        })
        .collect()
}

fn pg_type(arrow: &DataType, pg: &PostgresType) -> Option<(String, Vec<u32>)> {
    let simple = |ddl: &str, oid: u32| Some((ddl.to_string(), vec![oid]));
    match pg {
        PostgresType::Bool => simple("boolean", 16),
        PostgresType::Bytea => simple("bytea", 17),
        PostgresType::Int2 => simple("smallint", 21),
        PostgresType::Int4 => simple("integer", 23),
        PostgresType::Int8 => simple("bigint", 20),
        PostgresType::Char => simple("\"char\"", 18),
        // text, varchar and bpchar share the binary form.
        PostgresType::Text => Some(("text".into(), vec![25, 1043, 1042])),
        PostgresType::Json => simple("json", 114),
        PostgresType::Jsonb => simple("jsonb", 3802),
        PostgresType::Float4 => simple("real", 700),
        PostgresType::Float8 => simple("double precision", 701),
        PostgresType::Numeric => {
            let ddl = match arrow {
                DataType::Decimal32(p, s)
                | DataType::Decimal64(p, s)
                | DataType::Decimal128(p, s)
                | DataType::Decimal256(p, s)
                    if *s >= 0 && (*s as u8) <= *p =>
                {
                    format!("numeric({p},{s})")
                }
                _ => "numeric".into(),
            };
            Some((ddl, vec![1700]))
        }
        PostgresType::Date => simple("date", 1082),
        PostgresType::Time => simple("time", 1083),
        // Both hold microseconds since 2000-01-01 (UTC for timestamptz).
        PostgresType::Timestamp => match arrow {
            DataType::Timestamp(_, Some(_)) => Some(("timestamptz".into(), vec![1184, 1114])),
            _ => Some(("timestamp".into(), vec![1114, 1184])),
        },
        PostgresType::Interval => simple("interval", 1186),
        PostgresType::List(inner) => {
            let item = match arrow {
                DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type().clone(),
                _ => return None,
            };
            let (ddl, _) = pg_type(&item, &inner.data_type)?;
            Some((format!("{ddl}[]"), vec![pg.oid()?]))
        }
        PostgresType::UserDefined { .. } => None,
    }
}

/// How a PostgreSQL column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAs {
    /// boolean → Boolean
    Bool,
    /// smallint → Int16
    Int2,
    /// integer → Int32
    Int4,
    /// bigint → Int64
    Int8,
    /// real → Float32
    Float4,
    /// double precision → Float64
    Float8,
    /// text, varchar, name → Utf8
    Text,
    /// char(n) → Utf8 without its trailing blanks, as PostgreSQL's `::text` gives it: PostgreSQL
    /// compares char(n) with trailing blanks insignificant, so `c = 'ab'` holds for `'ab   '`
    Bpchar,
    /// bytea → Binary
    Bytea,
    /// date → Date32
    Date,
    /// timestamp → Timestamp(µs)
    Timestamp,
    /// timestamptz → Timestamp(µs, UTC)
    TimestampTz,
    /// time → Time64(µs)
    Time,
    /// numeric(p,s) with p ≤ 38 → Decimal128(p,s)
    Decimal(u8, i8),
    /// numeric without a precision (or wider than 38 digits) → Float64, as DuckDB reads it
    NumericFloat,
    /// anything else (uuid, json, arrays, intervals, ...) is read as its text form (`col::text`)
    CastText,
}

impl ReadAs {
    /// The mapping for a column of type `oid` with modifier `typmod`.
    pub fn for_type(oid: u32, typmod: i32) -> ReadAs {
        match oid {
            16 => ReadAs::Bool,
            21 => ReadAs::Int2,
            23 => ReadAs::Int4,
            20 => ReadAs::Int8,
            700 => ReadAs::Float4,
            701 => ReadAs::Float8,
            25 | 1043 | 19 => ReadAs::Text,
            1042 => ReadAs::Bpchar,
            17 => ReadAs::Bytea,
            1082 => ReadAs::Date,
            1114 => ReadAs::Timestamp,
            1184 => ReadAs::TimestampTz,
            1083 => ReadAs::Time,
            1700 if typmod >= 4 => {
                let p = ((typmod - 4) >> 16) & 0xffff;
                let s = (typmod - 4) & 0xffff;
                if (1..=38).contains(&p) && s <= p {
                    ReadAs::Decimal(p as u8, s as i8)
                } else {
                    ReadAs::NumericFloat
                }
            }
            1700 => ReadAs::NumericFloat,
            _ => ReadAs::CastText,
        }
    }

    /// Whether PostgreSQL compares values of this type exactly as DataFusion compares what is
    /// read, so a filter on it may be pushed down. Not for floats (PostgreSQL has `-0 = 0` and
    /// `NaN = NaN`; Arrow orders them by IEEE total order), unconstrained numerics (PostgreSQL
    /// compares the exact value, DataFusion the rounded Float64), or text cast from other types.
    pub fn compares_like_datafusion(self) -> bool {
        !matches!(self, ReadAs::Float4 | ReadAs::Float8 | ReadAs::NumericFloat | ReadAs::CastText | ReadAs::Bytea)
    }

    /// The Arrow type read.
    pub fn arrow(self) -> DataType {
        match self {
            ReadAs::Bool => DataType::Boolean,
            ReadAs::Int2 => DataType::Int16,
            ReadAs::Int4 => DataType::Int32,
            ReadAs::Int8 => DataType::Int64,
            ReadAs::Float4 => DataType::Float32,
            ReadAs::Float8 | ReadAs::NumericFloat => DataType::Float64,
            ReadAs::Text | ReadAs::Bpchar | ReadAs::CastText => DataType::Utf8,
            ReadAs::Bytea => DataType::Binary,
            ReadAs::Date => DataType::Date32,
            ReadAs::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ReadAs::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ReadAs::Time => DataType::Time64(TimeUnit::Microsecond),
            ReadAs::Decimal(p, s) => DataType::Decimal128(p, s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn write_types_are_exact() {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("q", DataType::Decimal128(15, 2), true),
            Field::new("s", DataType::Utf8View, true),
            Field::new("d", DataType::Date32, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("i", DataType::Int32, true),
        ]);
        let enc = pgpq::ArrowToPostgresBinaryEncoder::try_new(&schema).unwrap();
        let cols = out_columns(&schema, &enc.schema()).unwrap();
        let ddl: Vec<&str> = cols.iter().map(|c| c.ddl.as_str()).collect();
        assert_eq!(ddl, ["bigint", "numeric(15,2)", "text", "date", "timestamptz", "integer"]);
        assert_eq!(cols[5].accepts, [23], "int4 only: binary COPY does not widen");
    }

    #[test]
    fn read_types() {
        assert_eq!(ReadAs::for_type(1700, ((15 << 16) | 2) + 4), ReadAs::Decimal(15, 2));
        assert_eq!(ReadAs::for_type(1700, -1), ReadAs::NumericFloat);
        assert_eq!(ReadAs::for_type(2950, -1), ReadAs::CastText);
        assert_eq!(ReadAs::for_type(1043, 14), ReadAs::Text);
        assert_eq!(ReadAs::for_type(1042, 9), ReadAs::Bpchar);
    }
}
