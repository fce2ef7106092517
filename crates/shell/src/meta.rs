//! The shell's own commands, in DuckDB's dot form and psql's backslash form.

use crate::error::{Error, Result};
use crate::format::Format;

/// A parsed shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `.tables`, `\d`, `\dt`: the tables, with their columns.
    Tables,
    /// `.schema [NAME]`, `\d NAME`: a table's columns and types (every table's without a name).
    Schema(Option<String>),
    /// `\timing [on|off]`, `.timer [on|off]`: the status line after each statement (no
    /// argument: toggle).
    Timing(Option<bool>),
    /// `.mode FORMAT`, `\pset format FORMAT`: how results are printed.
    Format(Format),
    /// `.maxrows N`: rows a table shows (0: all).
    MaxRows(usize),
    /// `.help`, `\?`.
    Help,
    /// `.quit`, `.exit`, `\q`.
    Quit,
}

/// What `.help` prints.
pub const HELP: &str = "\
SQL statements end with `;` and may span lines. Ctrl-C cancels the running statement; Ctrl-D leaves.
  .tables  \\d             the tables, with their columns
  .schema [NAME]  \\d NAME  a table's columns and types
  .mode FORMAT  \\pset format FORMAT
                          table, csv, json or ndjson
  .maxrows N              rows a table shows (0: all)
  .timer [on|off]  \\timing [on|off]
                          the line after each statement: rows, time, peak memory, spilled bytes
  .help  \\?               this text
  .quit  .exit  \\q        leave
EXPLAIN ANALYZE SELECT ... shows each operator's metrics, spilling joins' buckets and spills among them.";

/// Parses a command line (starting with `.` or `\`).
pub fn parse(line: &str) -> Result<Command> {
    let mut words = line.split_whitespace();
    let head = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let on_off = |args: &[&str]| -> Result<Option<bool>> {
        match args.first().map(|a| a.to_ascii_lowercase()).as_deref() {
            None => Ok(None),
            Some("on") => Ok(Some(true)),
            Some("off") => Ok(Some(false)),
            Some(other) => Err(Error::Command(format!("{head}: expected on or off, got {other:?}"))),
        }
    };
    Ok(match (head, args.as_slice()) {
        (".tables" | "\\dt", []) | ("\\d", []) => Command::Tables,
        (".schema", []) => Command::Schema(None),
        (".schema" | "\\d" | "\\d+", [name]) => Command::Schema(Some(name.trim_end_matches(';').to_string())),
        ("\\timing" | ".timer", a) => Command::Timing(on_off(a)?),
        (".mode", [f]) | ("\\pset", ["format", f]) => Command::Format(f.parse()?),
        (".maxrows", [n]) => Command::MaxRows(
            n.parse().map_err(|_| Error::Command(format!(".maxrows: expected a number of rows, got {n:?}")))?,
        ),
        (".help" | "\\?" | "\\h", _) => Command::Help,
        (".quit" | ".exit" | "\\q", []) => Command::Quit,
        _ => return Err(Error::Command(format!("unknown command {line:?} (.help lists them)"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings() {
        assert_eq!(parse(".tables").unwrap(), Command::Tables);
        assert_eq!(parse("\\d").unwrap(), Command::Tables);
        assert_eq!(parse("\\d lineitem").unwrap(), Command::Schema(Some("lineitem".into())));
        assert_eq!(parse(".schema  orders").unwrap(), Command::Schema(Some("orders".into())));
        assert_eq!(parse("\\timing off").unwrap(), Command::Timing(Some(false)));
        assert_eq!(parse(".timer").unwrap(), Command::Timing(None));
        assert_eq!(parse("\\pset format csv").unwrap(), Command::Format(Format::Csv));
        assert_eq!(parse(".mode ndjson").unwrap(), Command::Format(Format::Ndjson));
        assert_eq!(parse(".maxrows 5").unwrap(), Command::MaxRows(5));
        assert_eq!(parse("\\q").unwrap(), Command::Quit);
        assert!(parse(".frobnicate").unwrap_err().to_string().contains(".help"));
        assert!(parse(".mode xml").is_err());
    }
}
