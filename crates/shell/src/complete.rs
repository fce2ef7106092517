//! What the terminal's line editor asks of the shell: completion of table and column names, SQL
//! keywords and shell commands, and whether the input is a whole statement yet (else Enter goes
//! to a new line of the same statement).

use crate::script;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::Context;

/// SQL keywords offered for completion (in the case the word was started in).
const KEYWORDS: &[&str] = &[
    "ALL",
    "ANALYZE",
    "AND",
    "AS",
    "ASC",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "COUNT",
    "CREATE",
    "CROSS",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "ELSE",
    "END",
    "EXCEPT",
    "EXISTS",
    "EXPLAIN",
    "EXTERNAL",
    "FALSE",
    "FROM",
    "FULL",
    "GROUP",
    "HAVING",
    "IN",
    "INNER",
    "INTERSECT",
    "INTERVAL",
    "IS",
    "JOIN",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCATION",
    "NOT",
    "NULL",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "RIGHT",
    "SELECT",
    "SET",
    "SHOW",
    "STORED",
    "SUM",
    "TABLE",
    "TABLES",
    "THEN",
    "TRUE",
    "UNION",
    "USING",
    "VALUES",
    "VIEW",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
];

/// Shell commands offered at the start of a line.
const COMMANDS: &[&str] = &[
    ".tables", ".schema", ".mode", ".maxrows", ".timer", ".help", ".quit", ".exit", "\\d", "\\dt", "\\timing",
    "\\pset", "\\q", "\\?",
];

/// The line editor's helper: holds the session's table and column names, refreshed before each
/// prompt.
#[derive(Default)]
pub struct Helper {
    names: Vec<String>,
}

impl Helper {
    /// Replaces the names offered.
    pub fn set_names(&mut self, names: Vec<String>) {
        self.names = names;
    }

    /// Candidates for the word `prefix`, which starts at the beginning of its line when
    /// `line_start`.
    pub fn candidates(&self, prefix: &str, line_start: bool) -> Vec<String> {
        if prefix.is_empty() {
            return Vec::new();
        }
        let lower = prefix.to_ascii_lowercase();
        let upper_case = prefix.chars().any(|c| c.is_ascii_uppercase());
        let mut out: Vec<String> = Vec::new();
        if line_start && (prefix.starts_with('.') || prefix.starts_with('\\')) {
            out.extend(COMMANDS.iter().filter(|c| c.starts_with(prefix)).map(|c| c.to_string()));
            return out;
        }
        out.extend(self.names.iter().filter(|n| n.to_ascii_lowercase().starts_with(&lower)).cloned());
        out.extend(KEYWORDS.iter().filter(|k| k.to_ascii_lowercase().starts_with(&lower)).map(|k| {
            if upper_case {
                k.to_string()
            } else {
                k.to_ascii_lowercase()
            }
        }));
        out.dedup();
        out
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Completer for Helper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let mut start = before.char_indices().rev().find(|(_, c)| !is_word(*c)).map_or(0, |(i, c)| i + c.len_utf8());
        let line_begin = before.rfind('\n').map_or(0, |i| i + 1);
        // A shell command's leading `.` or `\` belongs to the word.
        if start > line_begin
            && matches!(before.as_bytes()[start - 1], b'.' | b'\\')
            && before[line_begin..start - 1].trim().is_empty()
        {
            start -= 1;
        }
        let prefix = &before[start..];
        let line_start = before[line_begin..start].trim().is_empty();
        let pairs = self
            .candidates(prefix, line_start)
            .into_iter()
            .map(|c| Pair { display: c.clone(), replacement: c })
            .collect();
        Ok((start, pairs))
    }
}

impl Validator for Helper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if script::is_complete(ctx.input()) { ValidationResult::Valid(None) } else { ValidationResult::Incomplete })
    }
}

impl Hinter for Helper {
    type Hint = String;
}

impl Highlighter for Helper {}

impl rustyline::Helper for Helper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_columns_keywords_and_commands() {
        let mut h = Helper::default();
        h.set_names(vec!["l_orderkey".into(), "lineitem".into(), "orders".into()]);
        assert_eq!(h.candidates("li", false), vec!["lineitem", "like", "limit"]);
        assert_eq!(h.candidates("SEL", false), vec!["SELECT"]);
        assert_eq!(h.candidates("l_o", false), vec!["l_orderkey"]);
        assert_eq!(h.candidates(".ta", true), vec![".tables"]);
        assert!(h.candidates("", false).is_empty());
        let hist = rustyline::history::DefaultHistory::new();
        let ctx = Context::new(&hist);
        let (start, pairs) = h.complete("SELECT * FROM line", 18, &ctx).unwrap();
        assert_eq!((start, pairs[0].replacement.as_str()), (14, "lineitem"));
        let (start, pairs) = h.complete(".tab", 4, &ctx).unwrap();
        assert_eq!((start, pairs[0].replacement.as_str()), (0, ".tables"));
        let (start, pairs) = h.complete("\\d ord", 6, &ctx).unwrap();
        assert_eq!((start, pairs[0].replacement.as_str()), (3, "orders"));
    }
}
