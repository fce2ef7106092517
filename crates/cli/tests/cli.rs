//! End-to-end tests of the `spillway` binary. They share one generated TPC-H data set.
//!
//! Index (add a new CLI test to the matching group):
//! - `sql_*`: `spillway sql` under small budgets (spilling, output files, errors).
//! - `info_*`, `gen_*`: the other commands.
//! - `bad_input_*`: one-line errors and exit codes for bad sizes, files and SQL.
//! - `plan_*`, `run_*`, `init_*`: projects (examples/tpch among them).
//! - `bench_*`: the benchmark harness (and the DuckDB script when duckdb is installed).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MIB: f64 = 1048576.0;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env_remove("SPILLWAY_MEMORY").env_remove("SPILLWAY_PG_URL").env("SPILLWAY_LOG", "warn");
    c
}

/// Scratch space for this test binary, under the target dir (removed by `cargo clean`).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// TPC-H at scale factor 0.1 (600k lineitem rows), generated once for all tests. nextest runs
/// each test in its own process, so several may get here at once: each generates into its own
/// folder and renames it into place; the first rename wins and the others use its data.
fn tpch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("tpch-sf0.1");
        if !dir.is_dir() {
            let tmp = scratch().join(format!("tpch-sf0.1.tmp-{}", std::process::id()));
            let out = bin().args(["gen", "tpch", "--sf", "0.1", "--out"]).arg(&tmp).output().unwrap();
            assert!(out.status.success(), "gen tpch failed: {}", String::from_utf8_lossy(&out.stderr));
            if std::fs::rename(&tmp, &dir).is_err() {
                assert!(dir.is_dir(), "another test process must have created {}", dir.display());
                std::fs::remove_dir_all(&tmp).unwrap();
            }
        }
        dir
    })
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fail(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "expected failure: {cmd:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "must not panic: {err}");
    assert!(err.trim_end().lines().count() == 1, "one-line error expected, got: {err}");
    err
}

/// What spillway left in the spill dir `spill`: entries of its own folder `spill/spillway/`.
fn run_folders(spill: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(spill.join("spillway"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs `sql` over the TPC-H data under `memory`, returning the stats JSON.
fn sql_stats(name: &str, memory: &str, sql: &str, extra: &[&str]) -> Value {
    let stats = scratch().join(format!("{name}.stats.json"));
    let spill = scratch().join(format!("{name}.spill"));
    run(bin()
        .args(["sql", sql, "--memory", memory, "--max-rows", "3", "--data"])
        .arg(tpch())
        .arg("--stats-json")
        .arg(&stats)
        .arg("--spill-dir")
        .arg(&spill)
        .args(extra));
    assert!(run_folders(&spill).is_empty(), "spill directory {} must be empty after the run", spill.display());
    serde_json::from_slice(&std::fs::read(stats).unwrap()).unwrap()
}

/// The governed memory (anonymous RSS: heap, stacks, C allocations; not the binary's code pages)
/// must stay within the budget plus 15%.
fn assert_within_budget(stats: &Value, budget_mib: f64) {
    let peak = stats["peak_resident_bytes"].as_f64().unwrap();
    assert!(
        peak <= budget_mib * MIB * 1.15,
        "peak resident {:.1}MiB exceeds budget {budget_mib}MiB + 15%: {stats}",
        peak / MIB
    );
}

#[test]
fn sql_sort_spills_and_stays_within_budget() {
    let s = sql_stats(
        "sort",
        "64MiB",
        "SELECT l_orderkey, l_partkey, l_comment FROM lineitem ORDER BY l_comment, l_orderkey",
        &[],
    );
    assert_eq!(s["rows"], 600572);
    assert!(s["spilled_bytes"].as_u64().unwrap() > 0, "the sort must spill: {s}");
    assert_within_budget(&s, 64.0);
}

#[test]
fn sql_high_cardinality_aggregate_spills_and_stays_within_budget() {
    // 600k groups (one per order line but for a few repeated parts).
    let s = sql_stats(
        "agg",
        "64MiB",
        "SELECT l_orderkey, l_partkey, sum(l_extendedprice) AS p, count(*) AS n FROM lineitem GROUP BY 1, 2",
        &[],
    );
    assert_eq!(s["rows"], 600526);
    assert!(s["spilled_bytes"].as_u64().unwrap() > 0, "the aggregate must spill: {s}");
    assert!(s["pool_stats"]["denials"].as_u64().unwrap() > 0);
    assert_within_budget(&s, 64.0);
}

#[test]
fn sql_writes_output_files_that_read_back() {
    for ext in ["parquet", "csv", "arrow", "json"] {
        let out = scratch().join(format!("nations.{ext}"));
        let s = sql_stats(
            &format!("out-{ext}"),
            "64MiB",
            "SELECT n_nationkey, n_name FROM nation ORDER BY n_nationkey",
            &["--output", out.to_str().unwrap()],
        );
        assert_eq!(s["rows"], 25);
        let back = run(bin()
            .args(["sql", "SELECT count(*) AS n, max(n_name) AS m FROM t", "--memory", "64MiB", "--table"])
            .arg(format!("t={}", out.display())));
        let text = String::from_utf8_lossy(&back.stdout);
        assert!(text.contains("| 25 | VIETNAM |"), "{ext}: {text}");
    }
}

#[test]
fn sql_prints_a_table_and_counts_rows() {
    let out = run(bin()
        .args(["sql", "SELECT r_name FROM region ORDER BY r_name", "--memory", "64MiB", "--max-rows", "2", "--data"])
        .arg(tpch()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| AFRICA"), "{text}");
    assert!(!text.contains("EUROPE"), "only two rows are shown: {text}");
    assert!(text.contains("5 rows (showing the first 2"), "{text}");
}

#[test]
fn sql_refuses_set_runtime() {
    let err = fail(bin()
        .args(["sql", "SET datafusion.runtime.memory_limit = '10G'; SELECT 1", "--memory", "64MiB"]));
    assert!(err.contains("datafusion.runtime.memory_limit") && err.contains("--memory"), "{err}");
    // Other settings are allowed.
    run(bin().args(["sql", "SET datafusion.execution.batch_size = 1024; SELECT 1", "--memory", "64MiB"]));
}

#[test]
fn sql_failed_output_keeps_previous_file() {
    let out = scratch().join("keep.csv");
    std::fs::write(&out, "old\n").unwrap();
    fail(bin()
        .args(["sql", "SELECT 1/0 AS boom", "--memory", "64MiB", "--output"])
        .arg(&out));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    let leftovers: Vec<_> = std::fs::read_dir(scratch())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".keep.csv"))
        .collect();
    assert!(leftovers.is_empty(), "no partial file may stay behind");
}

#[test]
fn info_reports_detection() {
    let out = run(bin().args(["info", "--memory", "50%"]));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in ["memory limit", "budget", "(50% of the limit)", "cores", "spill root", "allocator     jemalloc"] {
        assert!(text.contains(key), "missing {key:?} in:\n{text}");
    }
}

#[test]
fn gen_tpch_writes_every_table() {
    let dir = tpch();
    for t in ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"] {
        assert!(dir.join(t).join("part-1.parquet").is_file(), "{t} missing");
    }
    let out = run(bin()
        .args(["sql", "SELECT count(*) FROM orders", "--memory", "64MiB", "--data"])
        .arg(dir));
    assert!(String::from_utf8_lossy(&out.stdout).contains("150000"));
}

#[test]
fn bad_input_gives_one_line_errors() {
    let e = fail(bin().args(["info", "--memory", "lots"]));
    assert!(e.contains("invalid size \"lots\""), "{e}");
    let e = fail(bin().args(["info", "--memory", "100TiB"]));
    assert!(e.contains("larger than the effective memory limit"), "{e}");
    let e = fail(bin().args(["info", "--memory", "1MiB"]));
    assert!(e.contains("below the workable minimum"), "{e}");
    let e = fail(bin().args(["sql", "SELECT 1", "--memory", "64MiB", "--table", "t=/nonexistent/x.parquet"]));
    assert!(e.contains("no such file or directory") && e.contains("/nonexistent/x.parquet"), "{e}");
    let e = fail(bin().args(["sql", "SELEC 1", "--memory", "64MiB"]));
    assert!(e.contains("SELEC"), "{e}");
    let e = fail(bin().args(["sql", "SELECT * FROM missing_table", "--memory", "64MiB"]));
    assert!(e.contains("missing_table"), "{e}");
    let e = fail(bin().env("SPILLWAY_MEMORY", "12 parsecs").args(["info"]));
    assert!(e.contains("invalid size"), "{e}");
    let e = fail(bin().args(["sql", "SELECT 1", "--memory", "64MiB", "--spill-dir", "/proc/spillway"]));
    assert!(e.contains("spill directory /proc/spillway") && e.contains("cannot create it"), "{e}");
}

/// Issue #3: a spill quota too small for the work fails the query with the numbers and leaves
/// nothing behind.
#[test]
fn sql_spill_quota_too_small_fails_cleanly() {
    let spill = scratch().join("quota.spill");
    let _ = std::fs::remove_dir_all(&spill);
    let e = fail(bin()
        .args(["sql", "SELECT l_comment FROM lineitem ORDER BY l_comment", "--memory", "64MiB", "--max-spill", "1MiB"])
        .args(["--max-rows", "1", "--data"])
        .arg(tpch())
        .arg("--spill-dir")
        .arg(&spill));
    assert!(e.contains("spill files passed the temp-space quota") && e.contains("--max-spill"), "{e}");
    assert!(run_folders(&spill).is_empty(), "run dir must be removed: {:?}", run_folders(&spill));
}

/// Issue #3: a process killed with SIGKILL while spilling leaves its run directory behind; the
/// next start removes it and says so.
#[test]
fn sql_killed_mid_spill_leaves_a_run_dir_the_next_start_sweeps() {
    let spill = scratch().join("killed.spill");
    let _ = std::fs::remove_dir_all(&spill);
    let mut child = bin()
        .args(["sql", "SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC", "--memory", "64MiB"])
        .arg("--spill-dir")
        .arg(&spill)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run_dirs = || -> Vec<PathBuf> { run_folders(&spill).into_iter().filter(|p| p.is_dir()).collect() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let spilling = loop {
        let busy = run_dirs().iter().any(|d| {
            std::fs::read_dir(d.join("datafusion")).map(|mut e| e.next().is_some()).unwrap_or(false)
        });
        if busy || std::time::Instant::now() > deadline {
            break busy;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(spilling, "the sort should have started spilling");
    let left = run_dirs();
    assert_eq!(left.len(), 1, "the killed process leaves its run dir: {left:?}");
    // `info` reports it and removes nothing; the next run removes it and says so.
    let out = run(bin().args(["info", "--memory", "64MiB", "--spill-dir"]).arg(&spill));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 run folder(s) of dead processes"), "{stdout}");
    assert_eq!(run_dirs().len(), 1, "info only reports");
    let out = run(bin().args(["sql", "SELECT 1", "--memory", "64MiB", "--spill-dir"]).arg(&spill));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed the run folder of a process that is gone"), "{stderr}");
    assert!(run_dirs().is_empty());
}

/// Issue #4 (first part): `spillway plan` validates a project and prints its run order.
#[test]
fn plan_prints_the_dag_and_names_file_and_line_of_errors() {
    let dir = scratch().join("plan-project");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("spillway.toml"), "memory = \"512MiB\"\n[sources.tpch]\ntype = \"tpch\"\nsf = 0.01\n").unwrap();
    std::fs::write(dir.join("models/lines.sql"), "SELECT l_orderkey FROM lineitem").unwrap();
    std::fs::write(dir.join("models/counts.sql"), "-- spillway: profile=L class=heavy\nSELECT count(*) FROM lines").unwrap();
    let out = run(bin().arg("plan").arg(&dir));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("budget 512MiB"), "the project's spillway.toml sets the budget: {text}");
    let lines_at = text.find("  1  lines").expect("lines runs first");
    let counts_at = text.find("  2  counts").expect("counts runs second");
    assert!(lines_at < counts_at);
    assert!(text.contains("heavy  L 307.20MiB"), "{text}");
    std::fs::write(dir.join("models/bad.sql"), "SELECT *\nFROM lines\nJOIN nowhere ON true").unwrap();
    let e = fail(bin().arg("plan").arg(&dir));
    assert!(e.contains("models/bad.sql:3: unknown table `nowhere`"), "{e}");
}

/// Copies the repository's `examples/tpch` project (models and config, not its data or runs).
fn example_project(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tpch");
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::copy(src.join("spillway.toml"), dir.join("spillway.toml")).unwrap();
    for entry in std::fs::read_dir(src.join("models")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join("models").join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// Issue #4: the README's first command, at a tiny scale factor under 64MiB: every model runs,
/// each of the three hand-off tiers is used, memory stays within the budget, outputs are
/// published, and the report renders.
#[test]
fn run_example_project_end_to_end_under_a_small_budget() {
    let dir = example_project("example-run");
    let spill = scratch().join("example-run.spill");
    let out = run(bin()
        .arg("run")
        .arg(&dir)
        .args(["--memory", "64MiB", "--set", "sources.tpch.sf=0.1", "--jobs", "1", "--plain", "--spill-dir"])
        .arg(&spill));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("9 of 9") && text.contains("9 ok, 0 failed, 0 skipped"), "{text}");
    assert!(text.contains("OK    order_lines ["), "plain progress lines: {text}");

    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".spillway/runs/latest/run_results.json")).unwrap()).unwrap();
    assert_eq!(results["status"], "ok");
    assert_eq!(results["budget_bytes"], 64u64 << 20);
    assert_within_budget(&results, 64.0);
    let steps = results["steps"].as_array().unwrap();
    let tier = |m: &str| steps.iter().find(|s| s["name"] == m).unwrap()["tier"].as_str().unwrap().to_string();
    let tiers: std::collections::BTreeSet<String> = steps.iter().filter_map(|s| s["tier"].as_str().map(String::from)).collect();
    for t in ["memory", "ipc", "parquet"] {
        assert!(tiers.contains(t), "tier {t} is exercised: {tiers:?}");
    }
    assert_eq!(tier("order_lines"), "ipc", "600k order lines outgrow 45% of 64MiB");
    assert_eq!(tier("customer_revenue"), "parquet", "a checkpoint");
    assert_eq!(tier("check_revenue_positive"), "check");
    let order_lines = steps.iter().find(|s| s["name"] == "order_lines").unwrap();
    assert_eq!(order_lines["rows"], 600572);
    let top = std::fs::read_to_string(dir.join("output/top_customers.csv")).unwrap();
    assert_eq!(top.lines().count(), 101, "a header and 100 customers");
    assert!(dir.join("output/revenue_by_nation_month.parquet").is_file());
    assert!(run_folders(&spill).is_empty(), "temp space is removed after the run: {:?}", run_folders(&spill));

    let out = run(bin().arg("report").arg(&dir));
    let report = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("<svg class=chart"), "{}", report.display());
    assert!(html.contains("order_lines") && html.contains("budget 64MiB"));
}

/// Issue #7: with `SPILLWAY_PG_URL` set, the example also ends in PostgreSQL (a real server
/// started for the test): its two postgres sinks load, keyed as configured, and a second run
/// replaces the tables in place.
#[test]
fn run_example_project_ends_in_postgres() {
    let server = spillway_postgres::testing::TestServer::start().unwrap();
    server.create_db("tpch").unwrap();
    let dir = example_project("example-postgres");
    let args = ["--memory", "256MiB", "--set", "sources.tpch.sf=0.01", "--plain"];
    for _ in 0..2 {
        let out = run(bin().arg("run").arg(&dir).args(args).env("SPILLWAY_PG_URL", server.url("tpch")));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("9 ok, 0 failed") && text.contains("/tpch public.customer_revenue"), "{text}");
        assert!(!text.contains(spillway_postgres::testing::PASSWORD), "no password in the output: {text}");
    }
    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".spillway/runs/latest/run_results.json")).unwrap()).unwrap();
    let steps = results["steps"].as_array().unwrap();
    let step = |m: &str| steps.iter().find(|s| s["name"] == m).unwrap().clone();
    let sink_rows = |m: &str, sink: &str| {
        step(m)["sinks"].as_array().unwrap().iter().find(|s| s["name"] == sink).unwrap()["rows"].as_u64().unwrap()
    };
    let revenue = sink_rows("revenue_by_nation_month", "revenue_by_nation_month_pg");
    assert_eq!(revenue, step("revenue_by_nation_month")["rows"].as_u64().unwrap());
    assert_eq!(server.psql("tpch", "SELECT count(*) FROM revenue_by_nation_month").unwrap(), revenue.to_string());
    let customers = sink_rows("customer_revenue", "customer_revenue_pg");
    assert_eq!(server.psql("tpch", "SELECT count(DISTINCT o_custkey) FROM customer_revenue").unwrap(), customers.to_string());
    assert_eq!(
        server.psql("tpch", "SELECT string_agg(indexname, ',') FROM pg_indexes WHERE tablename = 'customer_revenue'").unwrap(),
        "customer_revenue_pkey"
    );
    assert_eq!(server.psql("tpch", "SELECT count(*) FROM pg_class WHERE relname LIKE '%spillway%'").unwrap(), "0");

    // Without the variable the optional sinks are skipped, saying why.
    let out = run(bin().arg("run").arg(&dir).args(args));
    assert!(String::from_utf8_lossy(&out.stdout).contains("9 ok, 0 failed"));
    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".spillway/runs/latest/run_results.json")).unwrap()).unwrap();
    let skipped = results["steps"].as_array().unwrap().iter().flat_map(|s| s["sinks"].as_array().unwrap().clone()).filter(|k| k.get("skipped").is_some()).count();
    assert_eq!(skipped, 2);
}

/// Issue #4: `spillway init` scaffolds a project that plans and runs; bad models are refused
/// before any work with file and line.
#[test]
fn init_scaffolds_a_project_that_runs() {
    let dir = scratch().join("init-project");
    let _ = std::fs::remove_dir_all(&dir);
    run(bin().arg("init").arg(&dir));
    let e = fail(bin().arg("init").arg(&dir));
    assert!(e.contains("already holds a spillway.toml"), "{e}");
    run(bin().arg("plan").arg(&dir).args(["--set", "sources.tpch.sf=0.01"]));
    let out = run(bin().arg("run").arg(&dir).args(["--memory", "256MiB", "--set", "sources.tpch.sf=0.01", "--plain"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 ok, 0 failed"));
    assert!(dir.join("output/revenue_by_nation.parquet").is_file());

    std::fs::write(dir.join("models/broken.sql"), "SELECT o_custkey,\n       no_such_column\nFROM order_lines").unwrap();
    let e = fail(bin().arg("run").arg(&dir).args(["--set", "sources.tpch.sf=0.01"]));
    assert!(e.contains("models/broken.sql:2") && e.contains("no_such_column"), "{e}");
    let runs = std::fs::read_dir(dir.join(".spillway/runs")).unwrap().count();
    assert_eq!(runs, 2, "the failed validation started no run (one run folder and `latest`)");
}

/// Issue #4: a failed model makes `run` exit non-zero, naming it; its descendants are skipped.
#[test]
fn run_failure_exits_non_zero_and_skips_descendants() {
    let dir = scratch().join("failing-project");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("models/fine.sql"), "SELECT value AS v FROM range(1000)").unwrap();
    std::fs::write(dir.join("models/bad.sql"), "SELECT 1 / (value - 500) AS x FROM range(1000)").unwrap();
    std::fs::write(dir.join("models/after_bad.sql"), "SELECT count(*) AS n FROM bad").unwrap();
    let out = bin().arg("run").arg(&dir).args(["--memory", "128MiB", "--plain"]).output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ERROR bad") && stdout.contains("SKIP  after_bad (upstream bad did not complete)"), "{stdout}");
    assert!(stdout.contains("1 ok, 1 failed, 1 skipped"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 model(s) failed") && stderr.contains("models/bad.sql"), "{stderr}");
}

/// Issue #6: all 22 TPC-H queries at SF0.1 under 24MiB, where the big joins go out of core,
/// give the same results as DataFusion with 2GiB. (At 16MiB, the smallest budget spillway
/// accepts, a sort or an aggregate sometimes runs out first: the process's own ~80MiB of RSS
/// squeezes the lease; see docs/joins.md.)
#[test]
fn bench_tpch_under_24mib_matches_the_unbounded_run() {
    let json = scratch().join("bench-24mib.json");
    let reference = scratch().join("bench-2gib.json");
    let out = run(bin()
        .args(["bench", "tpch", "--sf", "0.1", "--memory", "24MiB", "--engine", "spillway", "--data"])
        .arg(tpch())
        .arg("--json")
        .arg(&json));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spillway   completed 22/22"), "{text}");
    run(bin()
        .args(["bench", "tpch", "--sf", "0.1", "--memory", "2GiB", "--engine", "datafusion", "--data"])
        .arg(tpch())
        .arg("--json")
        .arg(&reference));
    let ours: Vec<Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let theirs: Vec<Value> = serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    assert_eq!(ours.len(), 22);
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!((&o["status"], &t["status"]), (&Value::from("ok"), &Value::from("ok")), "{o} {t}");
        assert_eq!(o["checksum"], t["checksum"], "Q{} differs under 24MiB", o["query"]);
    }

    // Q18's joins do not fit: they go out of core, and say so.
    let q18 = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/queries/tpch/q18.sql")).unwrap();
    let stats = scratch().join("q18-24mib.stats.json");
    run(bin().args(["sql", "--memory", "24MiB", "--checksum", "--stats-json"]).arg(&stats).arg("--data").arg(tpch()).arg("--").arg(&q18));
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let joins = stats["joins"].as_array().unwrap();
    assert!(joins.iter().any(|j| j["out_of_core_partitions"].as_u64().unwrap() > 0), "{joins:?}");
}

/// Issue #5: the benchmark harness at a tiny scale factor: each query in a fresh process per
/// engine, with results that agree, and a query forced to fail reported as a row.
#[test]
fn bench_tpch_runs_each_engine_and_reports_failures_as_rows() {
    let data = scratch().join("bench-tpch-sf0.01");
    let json = scratch().join("bench.json");
    let out = run(bin()
        .args(["bench", "tpch", "--sf", "0.01", "--queries", "1,6,18", "--memory", "256MiB", "--data"])
        .arg(&data)
        .arg("--json")
        .arg(&json));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spillway   completed 3/3") && text.contains("datafusion completed 3/3"), "{text}");
    let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "peak RSS from the kernel: {r}");
        assert!(r["wall_ms"].as_u64().is_some() && r["checksum"].as_str().unwrap().len() == 16);
    }
    for q in [1, 6, 18] {
        let sums: Vec<&Value> = rows.iter().filter(|r| r["query"] == q).map(|r| &r["checksum"]).collect();
        assert_eq!(sums[0], sums[1], "spillway and DataFusion agree on Q{q}");
    }
    assert!(!text.contains("results differ"), "{text}");

    // A query that cannot finish in time is a `timeout` row, not a crash of the harness.
    run(bin()
        .args(["bench", "tpch", "--sf", "0.01", "--queries", "1", "--engine", "spillway", "--timeout", "0", "--data"])
        .arg(&data)
        .arg("--json")
        .arg(&json));
    let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "timeout");

    // DuckDB on the same files gives the same checksums. .ci/run installs it into bench/.venv
    // (or fails); a missing DuckDB fails this test rather than skipping it.
    let python = std::env::var("SPILLWAY_DUCKDB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/.venv/bin/python"));
    let has_duckdb = Command::new(&python).args(["-c", "import duckdb"]).output().is_ok_and(|o| o.status.success());
    assert!(has_duckdb, "duckdb is not installed at {}: run .ci/run (or pip install duckdb there)", python.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/duckdb_tpch.py");
    let duck_json = scratch().join("duckdb.json");
    run(Command::new(&python)
        .arg(&script)
        .args(["--sf", "0.01", "--queries", "1,6,18", "--memory", "256MiB", "--data"])
        .arg(&data)
        .arg("--json")
        .arg(&duck_json));
    let duck: Vec<Value> = serde_json::from_slice(&std::fs::read(&duck_json).unwrap()).unwrap();
    let ours: Vec<Value> = {
        let out = run(bin()
            .args(["bench", "tpch", "--sf", "0.01", "--queries", "1,6,18", "--engine", "spillway", "--memory", "256MiB", "--data"])
            .arg(&data)
            .arg("--json")
            .arg(&json));
        assert!(out.status.success());
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
    };
    for (d, o) in duck.iter().zip(&ours) {
        assert_eq!(d["status"], "ok", "{d}");
        assert_eq!(d["checksum"], o["checksum"], "DuckDB and spillway agree on Q{}", o["query"]);
    }
}

/// A hash join whose build side is far larger than the lease completes out of core, reports
/// what it did, and gives the same answer; the stock pool of the same size fails.
#[test]
fn sql_hash_join_larger_than_the_lease_goes_out_of_core() {
    let sql = "SELECT count(*) AS n, sum(a.value) AS s FROM range(2000000) a JOIN range(2000000) b ON a.value = b.value";
    let stats = scratch().join("grace-join.stats.json");
    let out = run(bin().args(["sql", "--memory", "32MiB", "--max-rows", "5", "--stats-json"]).arg(&stats).arg(sql));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000000") && text.contains("1999999000000"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join(s) out of core"), "{err}");
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let join = &stats["joins"][0];
    assert!(join["out_of_core_partitions"].as_u64().unwrap() > 0, "{join}");
    assert!(join["buckets"].as_u64().unwrap() >= 16, "{join}");
    assert!(join["spilled_bytes"].as_u64().unwrap() > 16 << 20, "{join}");
    assert!(stats["peak_resident_bytes"].as_u64().unwrap() < 64 << 20, "{stats}");
    let e = fail(bin().args(["sql", "--memory", "32MiB", "--native-joins", sql]));
    assert!(e.contains("Resources exhausted"), "{e}");
    let e = fail(bin().args(["sql", "--memory", "32MiB", "--pool", "greedy", sql]));
    assert!(e.contains("Resources exhausted"), "{e}");
}
