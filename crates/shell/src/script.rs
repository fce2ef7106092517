//! SQL text cut into what the shell runs, in order: SQL statements ended by `;` and the shell's
//! own commands (a line starting with `.` or `\` where a statement would start), each with the
//! line it starts on. Quotes (`'...'`, `"..."`) and comments (`-- ...`, `/* ... */`) are
//! respected: a `;` inside them ends nothing.

/// One SQL statement or shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// SQL or a shell command.
    pub kind: Kind,
    /// Its text: a statement without its `;`, a command without its line break.
    pub text: String,
    /// The line it starts on (1-based).
    pub line: usize,
    /// The column it starts at (1-based).
    pub column: usize,
}

/// What an [`Item`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An SQL statement.
    Sql,
    /// A shell command (`.tables`, `\d NAME`, ...).
    Command,
}

impl Item {
    /// The statement placed where it was in its source (blank lines and spaces before it), so that
    /// the line and column in a parser's error are those of the file.
    pub fn positioned(&self) -> String {
        let mut s = "\n".repeat(self.line - 1);
        s.push_str(&" ".repeat(self.column - 1));
        s.push_str(&self.text);
        s
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Single,
    Double,
    LineComment,
    Block(usize),
}

/// Scans `text`; returns its items and whether it ends inside an unfinished statement (an open
/// quote or comment, or SQL after the last `;`).
fn scan(text: &str) -> (Vec<Item>, bool) {
    let chars: Vec<char> = text.chars().collect();
    let mut items = Vec::new();
    let mut state = State::Normal;
    let (mut line, mut column) = (1usize, 1usize);
    // The current statement: its start (index, line, column) once something not blank was seen.
    let mut start: Option<(usize, usize, usize)> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let here = (i, line, column);
        let mut step = 1;
        match state {
            State::Normal => match c {
                '-' if next == Some('-') => {
                    state = State::LineComment;
                    step = 2;
                }
                '/' if next == Some('*') => {
                    state = State::Block(1);
                    step = 2;
                }
                '.' | '\\' if start.is_none() => {
                    // A shell command: the rest of the line.
                    let end = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |p| i + p);
                    let command: String = chars[i..end].iter().collect();
                    items.push(Item { kind: Kind::Command, text: command.trim_end().to_string(), line, column });
                    column += end - i;
                    i = end;
                    continue;
                }
                ';' => {
                    if let Some((s, l, col)) = start.take() {
                        let sql: String = chars[s..i].iter().collect();
                        items.push(Item { kind: Kind::Sql, text: sql.trim_end().to_string(), line: l, column: col });
                    }
                }
                c if c.is_whitespace() => {}
                c => {
                    if start.is_none() {
                        start = Some(here);
                    }
                    if c == '\'' {
                        state = State::Single;
                    } else if c == '"' {
                        state = State::Double;
                    }
                }
            },
            State::Single if c == '\'' => state = State::Normal,
            State::Double if c == '"' => state = State::Normal,
            State::LineComment if c == '\n' => state = State::Normal,
            State::Block(depth) if c == '*' && next == Some('/') => {
                state = if depth == 1 { State::Normal } else { State::Block(depth - 1) };
                step = 2;
            }
            State::Block(depth) if c == '/' && next == Some('*') => {
                state = State::Block(depth + 1);
                step = 2;
            }
            _ => {}
        }
        for k in 0..step {
            if chars.get(i + k) == Some(&'\n') {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        i += step;
    }
    let unfinished = start.is_some() || matches!(state, State::Single | State::Double | State::Block(_));
    if let Some((s, l, col)) = start {
        let sql: String = chars[s..].iter().collect();
        items.push(Item { kind: Kind::Sql, text: sql.trim_end().to_string(), line: l, column: col });
    }
    (items, unfinished)
}

/// The items of a script, in order. A last statement without `;` counts (as in `psql -f` and
/// DuckDB's `.read`); only blank text and comments give none.
pub fn split(text: &str) -> Vec<Item> {
    scan(text).0
}

/// Whether what was typed so far at the terminal is ready to run: every statement ended by `;`,
/// no quote or comment left open. A shell command or blank input is ready at once.
pub fn is_complete(text: &str) -> bool {
    !scan(text).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<(Kind, String, usize)> {
        split(s).into_iter().map(|i| (i.kind, i.text, i.line)).collect()
    }

    #[test]
    fn statements_and_commands_with_their_lines() {
        let s = "-- a comment; not a statement\nSELECT 1;\n\n.tables\nSELECT ';' AS x,\n  2 -- two;\n;\n\\d lineitem\nSELECT 3";
        assert_eq!(
            texts(s),
            vec![
                (Kind::Sql, "SELECT 1".into(), 2),
                (Kind::Command, ".tables".into(), 4),
                (Kind::Sql, "SELECT ';' AS x,\n  2 -- two;".into(), 5),
                (Kind::Command, "\\d lineitem".into(), 8),
                (Kind::Sql, "SELECT 3".into(), 9),
            ]
        );
    }

    #[test]
    fn comments_quotes_and_decimals_are_not_commands() {
        assert_eq!(texts("/* a; /* nested; */ b; */ SELECT .5;"), vec![(Kind::Sql, "SELECT .5".into(), 1)]);
        assert_eq!(texts("SELECT \"a;b\" FROM t;"), vec![(Kind::Sql, "SELECT \"a;b\" FROM t".into(), 1)]);
        assert!(split("-- only a comment\n  \n").is_empty());
    }

    #[test]
    fn completeness_at_the_terminal() {
        assert!(is_complete(""));
        assert!(is_complete(".tables"));
        assert!(is_complete("SELECT 1;"));
        assert!(is_complete("SELECT 1; -- done"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT 'a;"));
        assert!(!is_complete("SELECT 1 /* ; */"));
        assert!(!is_complete("SELECT 1;\nSELECT"));
    }

    #[test]
    fn positioned_keeps_line_and_column() {
        let items = split("\n\n   SELECT x;");
        assert_eq!((items[0].line, items[0].column), (3, 4));
        assert_eq!(items[0].positioned(), "\n\n   SELECT x");
    }
}
