/*! The `spillway` binary: parses arguments, resolves settings, and hands off to a command.

Errors are printed on one line (`error: ...` with their causes) and exit with status 1; usage
errors exit with status 2 (clap's convention).
*/

mod args;
mod commands;
mod http;
mod settings;

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options read at start-up: a background thread returns freed pages to the OS within
/// about 100ms (instead of jemalloc's default 10s), so resident memory tracks what is in use.
/// Measured (docs/benchmarks.md, issue #14): an external sort at 256MiB peaked at 1.23x the budget
/// in RSS with 1000ms and 1.06x with 100ms, at the same speed; 0ms was 40% slower.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 59] = b"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let args = args::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPILLWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
