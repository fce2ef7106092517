//! The shell at a terminal: rustyline's line editing and history (kept in a file across
//! sessions), statements that span lines until a `;`, completion of the session's tables and
//! columns. Ctrl-C at the prompt clears the line; during a statement it cancels the statement
//! and the shell goes on (the statement's future is dropped, which stops its DataFusion tasks
//! and removes its spill files). Ctrl-D, `.quit` or `\q` leave.

use crate::complete::Helper;
use crate::error::{Error, Result};
use crate::shell::{Flow, Shell};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};
use std::path::Path;

/// Reads and runs statements until Ctrl-D or `.quit`. `history`: the file kept across sessions
/// (read at start, saved after each entry); a path that exists and is not a regular file, such
/// as `/dev/null`, keeps none.
pub async fn run(shell: &mut Shell, history: Option<&Path>, banner: &str) -> Result<()> {
    // `/dev/null` (or any path that is not a regular file) keeps no history: rustyline would
    // make the file private (mode 0600), which must never happen to a device.
    let history = history.filter(|p| std::fs::metadata(p).map_or(true, |m| m.is_file()));
    let config = Config::builder().auto_add_history(false).max_history_size(10_000).map_err(terminal)?.build();
    let mut editor: Editor<Helper, DefaultHistory> = Editor::with_config(config).map_err(terminal)?;
    editor.set_helper(Some(Helper::default()));
    if let Some(path) = history {
        if path.exists() {
            editor.load_history(path).map_err(terminal)?;
        }
    }
    eprintln!("{banner}");
    eprintln!("Enter .help for the commands; statements end with `;`.");
    loop {
        let names = shell.names().await;
        if let Some(h) = editor.helper_mut() {
            h.set_names(names);
        }
        // rustyline blocks the thread while it reads; the runtime's other threads go on.
        match tokio::task::block_in_place(|| editor.readline("spillway> ")) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => {
                editor.add_history_entry(text.as_str()).map_err(terminal)?;
                if let Some(path) = history {
                    // Saved after every entry, so that a killed shell keeps its history.
                    if let Err(e) = editor.save_history(path) {
                        eprintln!("warning: history not saved to {}: {e}", path.display());
                    }
                }
                let mut stdout = std::io::stdout();
                if shell.run_typed(&text, &mut stdout).await == Flow::Quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(terminal(e)),
        }
    }
    Ok(())
}

fn terminal(e: ReadlineError) -> Error {
    Error::Terminal(e.to_string())
}
