//! DataFusion's own SQL test files through spillway sessions (issue #14, item 7): every file that
//! passes on stock DataFusion must pass, with the same answers, inside a generous lease and inside
//! a tight one (where sorts, aggregates and joins spill).
//!
//! `a_fast_subset_...` runs ten files in CI; with `SPILLWAY_SLT=all` (`bench/slt.sh`) the same
//! test runs every file and prints the counts docs/sqllogictest.md records. It changes the
//! process's working folder to the suite's copy (the files' paths are relative to it): nextest
//! runs each test in its own process.

use futures::StreamExt;
use spillway_governor::{fmt_bytes, Governor, GovernorConfig};
use spillway_slt::{Engine, FileOutcome, Suite};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A lease no file comes close to.
const GENEROUS: u64 = 1 << 30;
/// A lease small enough that the files' larger sorts, aggregates, joins and windows spill.
const TIGHT: u64 = 4 << 20;
/// One file on one engine may take this long before it counts as failed.
const FILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Files for CI: they pass on stock DataFusion and, between them, run joins of every kind
/// (`imdb`, `lateral_join`, `eliminate_outer_join`), grouped and windowed aggregates
/// (`imdb`, `array_agg_sliding_window`), set operations (`union_by_name`), nested and string
/// types, DML and prepared statements, in a few seconds on the three engines.
const FAST: &[&str] = &[
    "imdb.slt",
    "lateral_join.slt",
    "eliminate_outer_join.slt",
    "array_agg_sliding_window.slt",
    "union_by_name.slt",
    "struct.slt",
    "string_view.slt",
    "case.slt",
    "prepare.slt",
    "dml_update.slt",
];

fn governor() -> Governor {
    // The budget is far above what the files use: the leases, not pressure, bound each session.
    Governor::new(GovernorConfig::new(8 << 30)).expect("governor")
}

fn open_suite() -> (tempfile::TempDir, Suite) {
    let work = tempfile::tempdir().expect("temp dir");
    let suite = Suite::open(work.path()).expect("the sqllogictest files (cargo fetch)");
    std::env::set_current_dir(suite.root()).expect("cd into the suite");
    (work, suite)
}

async fn run(suite: &Suite, file: &Path, engine: Engine, governor: &Governor) -> FileOutcome {
    match tokio::time::timeout(FILE_TIMEOUT, suite.run(file, engine, governor)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => FileOutcome { failed: 1, failures: vec![e.to_string()], ..FileOutcome::default() },
        Err(_) => FileOutcome {
            failed: 1,
            failures: vec![format!("timed out after {FILE_TIMEOUT:?}")],
            ..FileOutcome::default()
        },
    }
}

/// One file on the three engines: stock, spillway generous, spillway tight.
struct Row {
    file: PathBuf,
    stock: FileOutcome,
    generous: Option<FileOutcome>,
    tight: Option<FileOutcome>,
}

async fn run_all(suite: &Suite, files: Vec<PathBuf>, governor: &Governor) -> Vec<Row> {
    futures::stream::iter(files)
        .map(|file| async move {
            let stock = run(suite, &file, Engine::Stock, governor).await;
            if !stock.passed() {
                return Row { file, stock, generous: None, tight: None };
            }
            let generous = run(suite, &file, Engine::Spillway { lease: GENEROUS }, governor).await;
            let tight = run(suite, &file, Engine::Spillway { lease: TIGHT }, governor).await;
            Row { file, stock, generous: Some(generous), tight: Some(tight) }
        })
        .buffer_unordered(2)
        .collect()
        .await
}

/// Files that pass on stock DataFusion and fail on spillway, except those where spillway's guard
/// refused a statement by design (listed by [`refusals_of`]).
fn failures_of(rows: &[Row]) -> Vec<String> {
    describe(rows, |o| o.refused == 0)
}

/// Files where spillway's guard refused a statement (`COPY ... TO`, `SET` of a setting spillway
/// sizes from the lease); the records after it may fail for want of its effect.
fn refusals_of(rows: &[Row]) -> Vec<String> {
    describe(rows, |o| o.refused > 0)
}

fn describe(rows: &[Row], which: impl Fn(&FileOutcome) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for row in rows {
        for (label, outcome) in [("generous", &row.generous), ("tight", &row.tight)] {
            if let Some(o) = outcome.as_ref().filter(|o| !o.passed() && which(o)) {
                out.push(format!(
                    "{} ({label} lease): {} of {} records failed ({} refused); first: {}",
                    row.file.display(),
                    o.failed,
                    o.records,
                    o.refused,
                    o.failures.first().map(String::as_str).unwrap_or("")
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_subset_of_datafusions_sql_tests_passes_on_spillway_under_a_generous_and_a_tight_lease() {
    if std::env::var("SPILLWAY_SLT").is_ok_and(|v| v == "all") {
        return every_file().await;
    }
    let (_work, suite) = open_suite();
    let governor = governor();
    let (all, _) = suite.files().expect("files");
    let files: Vec<PathBuf> = FAST
        .iter()
        .map(|name| {
            all.iter()
                .find(|f| f.file_name().is_some_and(|n| n == *name))
                .cloned()
                .unwrap_or_else(|| panic!("{name} is in the suite"))
        })
        .collect();
    let rows = run_all(&suite, files, &governor).await;
    for row in &rows {
        assert!(row.stock.passed(), "{} fails on stock DataFusion: {:?}", row.file.display(), row.stock.failures);
        assert!(row.stock.records > 20, "{} ran {} records", row.file.display(), row.stock.records);
    }
    let failures = failures_of(&rows);
    assert!(failures.is_empty(), "files that pass on DataFusion fail on spillway:\n{}", failures.join("\n"));
}

/// The whole suite (`SPILLWAY_SLT=all`): prints the counts, and fails if a file that passes on
/// stock DataFusion fails on spillway for a reason other than a refused statement.
async fn every_file() {
    let (_work, suite) = open_suite();
    let governor = governor();
    let (files, left_out) = suite.files().expect("files");
    let total = files.len() + left_out.len();
    let mut rows = run_all(&suite, files, &governor).await;
    rows.sort_by(|a, b| a.file.cmp(&b.file));
    let stock_passed: Vec<&Row> = rows.iter().filter(|r| r.stock.passed()).collect();
    let ok = |o: &Option<FileOutcome>| o.as_ref().is_some_and(FileOutcome::passed);
    let generous = stock_passed.iter().filter(|r| ok(&r.generous)).count();
    let tight = stock_passed.iter().filter(|r| ok(&r.tight)).count();
    let records: usize = stock_passed.iter().map(|r| r.stock.records).sum();
    let skipped: usize = rows.iter().map(|r| r.stock.skipped).sum();
    println!("\n## datafusion-sqllogictest 55.2.0 through spillway\n");
    println!("| | files |\n|---|---|");
    println!("| in the package | {total} |");
    for why in [
        "reads files outside the package",
        "prepared in Rust by DataFusion's runner",
        "another engine's or harness's folder",
    ] {
        println!("| left out: {why} | {} |", left_out.iter().filter(|(_, w)| *w == why).count());
    }
    println!("| run | {} |", rows.len());
    println!(
        "| pass on stock DataFusion | {} ({records} records; {skipped} EXPLAIN / runtime-setting records left out) |",
        stock_passed.len()
    );
    println!("| of those, pass on spillway, {} lease | {generous} |", fmt_bytes(GENEROUS));
    println!("| of those, pass on spillway, {} lease | {tight} |", fmt_bytes(TIGHT));
    let refusing = stock_passed
        .iter()
        .filter(|r| [&r.generous, &r.tight].iter().any(|o| o.as_ref().is_some_and(|o| o.refused > 0)))
        .count();
    println!("| of those, use a statement spillway refuses by design | {refusing} |");
    println!("\nFail on stock DataFusion in this runner:");
    for r in rows.iter().filter(|r| !r.stock.passed()) {
        println!(
            "- {}: {}",
            r.file.display(),
            r.stock.failures.first().map(|s| s.lines().next().unwrap_or("")).unwrap_or("")
        );
    }
    let refusals = refusals_of(&rows);
    println!(
        "\nPass on stock; on spillway, a statement is refused by design (then records that need its effect fail):"
    );
    for f in &refusals {
        println!("- {}", f.lines().next().unwrap_or(""));
    }
    let failures = failures_of(&rows);
    println!("\nPass on stock, fail on spillway:");
    for f in &failures {
        println!("- {}", f.lines().take(6).collect::<Vec<_>>().join(" / "));
    }
    if let Some(path) = std::env::var_os("SLT_REPORT") {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let one = |o: &Option<FileOutcome>| {
                    o.as_ref().map(|o| serde_json::json!({"passed": o.passed(), "records": o.records, "failed": o.failed, "refused": o.refused, "ms": o.elapsed.as_millis() as u64, "failures": o.failures}))
                };
                serde_json::json!({"file": r.file.display().to_string(), "stock": one(&Some(r.stock.clone())), "generous": one(&r.generous), "tight": one(&r.tight)})
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write SLT_REPORT");
    }
    assert!(failures.is_empty(), "{} file runs pass on DataFusion and fail on spillway", failures.len());
}
