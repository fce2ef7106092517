//! PostgreSQL endpoints: a pipeline can end in PostgreSQL (a sink) and start from it (a source).
//!
//! # Crate overview
//!
//! ```text
//!   sink:   Arrow batches ─pgpq─▶ binary COPY ─▶ one transaction per load
//!             replace: CREATE new table ─▶ COPY (FREEZE) ─▶ indexes ─▶ DROP old, RENAME ─▶ COMMIT
//!             append:  COPY into the table ─▶ COMMIT
//!             upsert:  COPY into a temp table ─▶ INSERT .. ON CONFLICT (key) DO UPDATE ─▶ COMMIT
//!   source: COPY (SELECT cols FROM t WHERE pushed-down filters) TO STDOUT (FORMAT binary)
//!             ─decode─▶ Arrow batches, charged to the session's memory pool
//! ```
//!
//! Every load is one transaction, so a failure anywhere (bad input, a constraint, a dropped
//! connection, a killed process) leaves the previous table as it was and no staging table behind:
//! PostgreSQL rolls back what was never committed.
//!
//! `conn` owns connecting (URLs from the config or the environment, never shown with their
//! password), `types` the Arrow ⇄ PostgreSQL type mapping, `sink` loading, `decode` the binary
//! COPY reader and `source` the DataFusion table; `cdc` follows tables through logical replication
//! (`pgoutput` decodes its row messages) and `view_sink` keeps a view in a table, one PostgreSQL
//! transaction per view transaction. `testing` starts a
//! throwaway server for tests.
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

pub mod cdc;
pub mod conn;
mod decode;
mod error;
pub mod pgoutput;
pub mod sink;
pub mod source;
pub mod testing;
pub mod types;
pub mod view_sink;

pub use conn::ConnSpec;
pub use error::{Error, Result};
pub use sink::{load, prepare, LoadReport, Mode, PreparedLoad, SinkSpec};
pub use source::{PgTable, SourceSpec};

/// `"name"` with embedded quotes doubled: every identifier spillway sends is quoted, so names
/// are used exactly as written (case and all).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'text'` as an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// Schema (`public` unless given).
    pub schema: String,
    /// Table.
    pub table: String,
}

impl TableName {
    /// `table` may be `schema.table`; `schema` (when given) wins over no schema in `table`.
    pub fn new(schema: Option<&str>, table: &str) -> Self {
        match (schema, table.split_once('.')) {
            (Some(s), _) => Self { schema: s.to_string(), table: table.to_string() },
            (None, Some((s, t))) => Self { schema: s.to_string(), table: t.to_string() },
            (None, None) => Self { schema: "public".into(), table: table.to_string() },
        }
    }

    /// `"schema"."table"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// The same schema, another table name (cut to PostgreSQL's 63-byte limit).
    pub fn sibling(&self, table: &str) -> Self {
        Self { schema: self.schema.clone(), table: truncate_ident(table) }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// `name` cut to 63 bytes (PostgreSQL's identifier limit), on a character boundary.
pub(crate) fn truncate_ident(name: &str) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quoting() {
        assert_eq!(TableName::new(None, "t").sql(), "\"public\".\"t\"");
        assert_eq!(TableName::new(None, "a.t").to_string(), "a.t");
        assert_eq!(TableName::new(Some("s"), "T").sql(), "\"s\".\"T\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(truncate_ident(&"x".repeat(80)).len(), 63);
    }
}
