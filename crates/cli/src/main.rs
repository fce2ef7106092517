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

/// jemalloc options read at start-up: a background thread returns freed pages to the OS about a
/// second after they are freed (jemalloc's default is 10s), and the governor's sampler purges
/// them at once under memory pressure (`spillway-governor`), so resident memory still tracks what
/// is in use near the budget. Measured (docs/performance.md, issue #18): with 100ms, pages freed
/// and taken again were zeroed by the kernel over and over (`clear_page_erms` 7.7% of TPC-H Q1's
/// profile, system time 0.4-0.6s against 0.2s with 1000ms, Q1 at SF10 5-10% faster); an external
/// sort and a 1.5M-group aggregate at 256MiB stayed at 0.94x and 0.90x the budget in peak RSS.
/// `muzzy_decay_ms:0`: decayed pages are unmapped, not left to the kernel's `MADV_FREE`, which
/// would keep counting them as resident.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let args = args::Cli::parse_from(args::sql_text_as_value(std::env::args_os()));
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPILLWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // An isolated model's child: no config, no ledger (its runner's lease already counts).
    if let args::Command::Worker = args.command {
        return ExitCode::from(spillway_isolate::worker::main(std::io::stdin().lock()).clamp(0, 255) as u8);
    }
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // Ctrl-C in a one-shot `spillway sql`: the statement was cancelled and cleaned up; the
        // exit status is the shell convention for SIGINT.
        Err(e) if e.downcast_ref::<spillway_shell::Error>().is_some_and(|e| e.is_interrupted()) => {
            eprintln!("interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
