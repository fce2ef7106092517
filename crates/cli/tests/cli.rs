//! End-to-end tests of the `spillway` binary. They share one generated TPC-H data set.
//!
//! Index (add a new CLI test to the matching group):
//! - `sql_*`: `spillway sql` under small budgets (spilling, output files, errors).
//! - `info_*`, `gen_*`: the other commands.
//! - `bad_input_*`: one-line errors and exit codes for bad sizes, files and SQL.
//! - `plan_*`, `run_*`, `init_*`: projects (examples/tpch among them).
//! - `bench_*`: the benchmark harness (and the DuckDB script when duckdb is installed).
//! - `provision_*`: `scripts/provision`, the set-up the README's test command does first.
//! - `isolate_*`, `ledger_*`: models in child processes under a memory cgroup; the machine-wide
//!   ledger shared by several processes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MIB: f64 = 1048576.0;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env_remove("SPILLWAY_MEMORY").env_remove("SPILLWAY_PG_URL").env("SPILLWAY_LOG", "warn");
    // The tests' own machine-wide ledger: they share it with each other, not with spillway
    // processes of whoever runs them.
    c.env("SPILLWAY_LEDGER", scratch().join("ledger")).env_remove("SPILLWAY_MACHINE_MEMORY");
    c.env_remove("SPILLWAY_ISOLATION");
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
    // A warning of another process's sweep (a run folder left by a test that killed its
    // child, found in the shared spill folder) may come first: only the error must be one line.
    let lines =
        err.trim_end().lines().filter(|l| !l.contains("removed the run folder of a process that is gone")).count();
    assert!(lines == 1, "one-line error expected, got: {err}");
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
    let err = fail(bin().args(["sql", "SET datafusion.runtime.memory_limit = '10G'; SELECT 1", "--memory", "64MiB"]));
    assert!(err.contains("datafusion.runtime.memory_limit") && err.contains("--memory"), "{err}");
    // Settings spillway sizes from the lease are refused too; other settings are allowed.
    let err = fail(bin().args(["sql", "SET datafusion.execution.batch_size = 1024; SELECT 1", "--memory", "64MiB"]));
    assert!(err.contains("sizes it from the memory lease"), "{err}");
    run(bin().args(["sql", "SET datafusion.optimizer.prefer_hash_join = false; SELECT 1", "--memory", "64MiB"]));
}

#[test]
fn sql_failed_output_keeps_previous_file() {
    let out = scratch().join("keep.csv");
    std::fs::write(&out, "old\n").unwrap();
    fail(bin().args(["sql", "SELECT 1/0 AS boom", "--memory", "64MiB", "--output"]).arg(&out));
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
    let out = run(bin().args(["sql", "SELECT count(*) FROM orders", "--memory", "64MiB", "--data"]).arg(dir));
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
    // Parquet files whose frame lies (issue #40): a footer longer than the file made parquet's
    // reader panic; a 0-byte file was read as an empty table. Each is an error naming the file.
    let dir = scratch().join("bad-parquet");
    std::fs::create_dir_all(&dir).unwrap();
    let good =
        std::fs::read(std::fs::read_dir(tpch().join("nation")).unwrap().next().unwrap().unwrap().path()).unwrap();
    let mut lying = good.clone();
    let n = lying.len();
    lying[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    for (file, bytes, says) in [
        ("garbage.parquet", b"PAR1garbagePAR1".to_vec(), "the metadata takes"),
        ("empty.parquet", Vec::new(), "the file is empty (0 bytes)"),
        ("lying-footer.parquet", lying, "the metadata takes 4294967295 bytes"),
        ("no-magic.parquet", good[4..].to_vec(), "does not start with PAR1"),
        ("cut.parquet", good[..good.len() - 3].to_vec(), "does not end with PAR1"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        let out = bin()
            .args(["sql", "SELECT * FROM t", "--memory", "64MiB", "--table"])
            .arg(format!("t={}", path.display()))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {e}");
        assert!(e.contains(file) && e.contains(says) && !e.contains("panicked"), "{file}: {e}");
    }
}

/// Issue #3: a spill quota too small for the work fails the query with the numbers and leaves
/// nothing behind.
#[test]
fn sql_spill_quota_too_small_fails_cleanly() {
    let spill = scratch().join("quota.spill");
    let _ = std::fs::remove_dir_all(&spill);
    let e = fail(
        bin()
            .args([
                "sql",
                "SELECT l_comment FROM lineitem ORDER BY l_comment",
                "--memory",
                "64MiB",
                "--max-spill",
                "1MiB",
            ])
            .args(["--max-rows", "1", "--data"])
            .arg(tpch())
            .arg("--spill-dir")
            .arg(&spill),
    );
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
        let busy = run_dirs()
            .iter()
            .any(|d| std::fs::read_dir(d.join("datafusion")).map(|mut e| e.next().is_some()).unwrap_or(false));
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
    std::fs::write(dir.join("spillway.toml"), "memory = \"512MiB\"\n[sources.tpch]\ntype = \"tpch\"\nsf = 0.01\n")
        .unwrap();
    std::fs::write(dir.join("models/lines.sql"), "SELECT l_orderkey FROM lineitem").unwrap();
    std::fs::write(dir.join("models/counts.sql"), "-- spillway: profile=L class=heavy\nSELECT count(*) FROM lines")
        .unwrap();
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
    let tiers: std::collections::BTreeSet<String> =
        steps.iter().filter_map(|s| s["tier"].as_str().map(String::from)).collect();
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
    assert_eq!(
        server.psql("tpch", "SELECT count(DISTINCT o_custkey) FROM customer_revenue").unwrap(),
        customers.to_string()
    );
    assert_eq!(
        server
            .psql("tpch", "SELECT string_agg(indexname, ',') FROM pg_indexes WHERE tablename = 'customer_revenue'")
            .unwrap(),
        "customer_revenue_pkey"
    );
    assert_eq!(server.psql("tpch", "SELECT count(*) FROM pg_class WHERE relname LIKE '%spillway%'").unwrap(), "0");

    // Without the variable the optional sinks are skipped, saying why.
    let out = run(bin().arg("run").arg(&dir).args(args));
    assert!(String::from_utf8_lossy(&out.stdout).contains("9 ok, 0 failed"));
    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.join(".spillway/runs/latest/run_results.json")).unwrap()).unwrap();
    let skipped = results["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["sinks"].as_array().unwrap().clone())
        .filter(|k| k.get("skipped").is_some())
        .count();
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

    std::fs::write(dir.join("models/broken.sql"), "SELECT o_custkey,\n       no_such_column\nFROM order_lines")
        .unwrap();
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
    assert!(
        stdout.contains("ERROR bad") && stdout.contains("SKIP  after_bad (upstream bad did not complete)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 ok, 1 failed, 1 skipped"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 model(s) failed") && stderr.contains("models/bad.sql"), "{stderr}");
}

/// Issue #6: all 22 TPC-H queries at SF0.1 under 24MiB, where the big joins go out of core,
/// give the same results as DataFusion with 2GiB. (At 16MiB, the smallest budget spillway
/// accepts, a sort or an aggregate sometimes runs out first: the process's own ~80MiB of RSS
/// squeezes the lease; see docs/joins.md.)
/// The README's test command provisions before it tests: with PostgreSQL's server binaries
/// hidden (`PG_BIN` naming a folder without them) it stops at once with one clear message, before
/// any test runs, instead of a panic in every test that starts a server.
#[test]
fn provision_without_postgres_fails_with_one_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let empty = scratch().join("no-pg-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(root.join("scripts/provision")).env("PG_BIN", &empty).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{err}");
    assert!(err.contains("initdb and pg_ctl") && err.contains("PG_BIN"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// TPC-H Q15 with its scalar subquery written as a join: a `CollectLeft` hash join's dynamic
/// filter sits below a spilling sort, whose merge must poll every partition (the join's probe
/// partitions wait for each other before the filter is complete). It used to hang forever at
/// any budget; here, with dynamic filters on (DataFusion's default), it must finish within a
/// deadline under a spilling budget with Q15's answer.
#[test]
fn sql_q15_with_its_subquery_as_a_join_finishes_with_dynamic_filters_on() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let as_join = std::fs::read_to_string(root.join("bench/q15_join.sql")).unwrap();
    let q15 =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/queries/tpch/q15.sql")).unwrap();
    let mut sums = Vec::new();
    for (sql, memory) in [(as_join.as_str(), "24MiB"), (as_join.as_str(), "2GiB"), (q15.as_str(), "2GiB")] {
        let mut child = bin()
            .args(["sql", "--memory", memory, "--checksum", "--data"])
            .arg(tpch())
            .arg("--")
            .arg(sql)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(120) {
                let _ = child.kill();
                panic!("Q15 as a join under {memory} did not finish in 120s (a hang)");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{memory}: {}", String::from_utf8_lossy(&out.stderr));
        sums.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    assert!(sums.iter().all(|s| s == &sums[2]), "Q15 as a join gives Q15's answer: {sums:?}");
}

#[test]
fn bench_tpch_under_24mib_matches_the_unbounded_run() {
    let json = scratch().join("bench-24mib.json");
    let reference = scratch().join("bench-2gib.json");
    let out = run(bin()
        .args([
            "bench",
            "tpch",
            "--sf",
            "0.1",
            "--memory",
            "24MiB",
            "--engine",
            "spillway",
            "--timeout",
            "120",
            "--data",
        ])
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
    let q18 =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/queries/tpch/q18.sql")).unwrap();
    let stats = scratch().join("q18-24mib.stats.json");
    run(bin()
        .args(["sql", "--memory", "24MiB", "--checksum", "--stats-json"])
        .arg(&stats)
        .arg("--data")
        .arg(tpch())
        .arg("--")
        .arg(&q18));
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

    // DuckDB on the same files gives the same checksums. scripts/provision installs it into bench/.venv
    // (or fails); a missing DuckDB fails this test rather than skipping it.
    let python = std::env::var("SPILLWAY_DUCKDB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/.venv/bin/python"));
    let has_duckdb = Command::new(&python).args(["-c", "import duckdb"]).output().is_ok_and(|o| o.status.success());
    assert!(
        has_duckdb,
        "duckdb is not installed at {}: run scripts/provision (the README's test command, scripts/test, does)",
        python.display()
    );
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
            .args([
                "bench",
                "tpch",
                "--sf",
                "0.01",
                "--queries",
                "1,6,18",
                "--engine",
                "spillway",
                "--memory",
                "256MiB",
                "--data",
            ])
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
    let sql =
        "SELECT count(*) AS n, sum(a.value) AS s FROM range(2000000) a JOIN range(2000000) b ON a.value = b.value";
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

/// Every file under `dir` whose name marks it as spillway's staging (a leak once its writer is
/// gone).
fn staging_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(".spillway-tmp-") {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(staging_files(&p));
        }
    }
    out
}

/// `N rows, checksum X` of a file, as `spillway sql --checksum` computes it (order-independent).
fn file_checksum(path: &Path) -> String {
    let out = run(bin()
        .args(["sql", "SELECT * FROM t", "--checksum", "--memory", "256MiB", "--table"])
        .arg(format!("t={}", path.display())));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const FAULT_OUTPUTS: [&str; 3] =
    ["output/revenue_by_nation_month.parquet", "output/top_customers.csv", "output/shipping_delays.parquet"];
const FAULT_TABLES: [&str; 2] = ["revenue_by_nation_month", "customer_revenue"];

/// The published outputs of the example: files and PostgreSQL tables, by content.
fn outputs(dir: &Path, server: &spillway_postgres::testing::TestServer) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = FAULT_OUTPUTS
        .iter()
        .filter(|f| dir.join(f).exists())
        .map(|f| (f.to_string(), file_checksum(&dir.join(f))))
        .collect();
    for t in FAULT_TABLES {
        let sql = format!("SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t");
        if let Ok(sum) = server.psql("tpch", &sql) {
            out.push((format!("postgres {t}"), sum));
        }
    }
    out
}

/// Issue #13: SIGKILL at every fault point a run of examples/tpch ending in PostgreSQL reaches
/// (`SPILLWAY_FAULT`). After each kill: published outputs are the previous ones or the new ones,
/// never partial; the next start removes every leaked run folder and staging file; `run
/// --resume` completes with outputs equal to an uninterrupted run's (by content). The scale is
/// reduced here; `bench/faults.sh` runs the same campaign larger (SPILLWAY_FAULTS_SF,
/// SPILLWAY_FAULTS_MEMORY) and prints the table.
#[test]
fn issue_13_sigkill_at_every_fault_point_loses_nothing_and_leaks_nothing() {
    let sf = std::env::var("SPILLWAY_FAULTS_SF").unwrap_or_else(|_| "0.1".into());
    let memory = std::env::var("SPILLWAY_FAULTS_MEMORY").unwrap_or_else(|_| "48MiB".into());
    let server = spillway_postgres::testing::TestServer::start().unwrap();
    server.create_db("tpch").unwrap();
    let url = server.url("tpch");
    // One hand-off is pinned to Parquet, so that every run writes one (with `auto`, a model's
    // output goes to Parquet when another heavy model happens to run beside it: timing, and a
    // point the reference run reached could then be missed by the run meant to die there).
    let pinned = "models.customer_nation.materialize=parquet";
    let args = |spill: &Path| -> Vec<String> {
        let sf = format!("sources.tpch.sf={sf}");
        ["--memory", &memory, "--set", &sf, "--set", pinned, "--jobs", "2", "--plain", "--spill-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(spill.display().to_string()))
            .collect()
    };
    // An uninterrupted run, traced: the reference outputs, and the points a run reaches.
    let reference = example_project("faults-reference");
    let spill = scratch().join("faults-reference.spill");
    let trace = scratch().join("faults-points.txt");
    let _ = std::fs::remove_file(&trace);
    run(bin()
        .arg("run")
        .arg(&reference)
        .args(args(&spill))
        .env("SPILLWAY_PG_URL", &url)
        .env("SPILLWAY_FAULT_TRACE", &trace));
    let want = outputs(&reference, &server);
    assert_eq!(want.len(), 5, "{want:?}");
    let mut points: Vec<String> = std::fs::read_to_string(&trace).unwrap().lines().map(String::from).collect();
    points.sort();
    points.dedup();
    // Generating TPC-H data happens in a child process, and only without a cached copy.
    if !points.iter().any(|p| p == "sources-generating") {
        points.push("sources-generating".into());
    }
    // Late in the run too (the N-th time a point is reached), where resume has most to reuse:
    // the example has nine models and four staged files (three sinks and a checkpoint).
    points
        .extend(["model-done@6", "manifest-written@8", "lease-granted@7", "publish-before-rename@3"].map(String::from));
    let data = format!(".spillway/data/tpch-sf{sf}");
    println!(
        "{:<26} {:>6} {:>8} {:>8} {:>6} {:>6} {:>7}",
        "point", "killed", "leaked", "left", "resume", "equal", "reused"
    );
    let mut rows = Vec::new();
    for point in &points {
        let dir = example_project(&format!("faults-{}", point.replace('@', "-at-")));
        // The previous run's outputs (and, except when generation is the point, its data).
        for f in FAULT_OUTPUTS {
            std::fs::create_dir_all(dir.join(f).parent().unwrap()).unwrap();
            std::fs::copy(reference.join(f), dir.join(f)).unwrap();
        }
        if point != "sources-generating" {
            std::fs::create_dir_all(dir.join(".spillway/data")).unwrap();
            let status = Command::new("cp").arg("-r").arg(reference.join(&data)).arg(dir.join(&data)).status().unwrap();
            assert!(status.success());
        } else {
            std::fs::create_dir_all(dir.join(".spillway/data")).unwrap();
        }
        let spill = scratch().join(format!("faults-{}.spill", point.replace('@', "-at-")));
        let _ = std::fs::remove_dir_all(&spill);
        let killed = bin()
            .arg("run")
            .arg(&dir)
            .args(args(&spill))
            .env("SPILLWAY_PG_URL", &url)
            .env("SPILLWAY_FAULT", point)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        let by_signal = killed.status.signal() == Some(9);
        assert!(by_signal || !killed.status.success(), "{point}: the run was not stopped: {killed:?}");
        // Never partial: what is published is the previous content or the new (equal) one.
        assert_eq!(outputs(&dir, &server), want, "{point}: a published output is partial");
        let leaked = run_folders(&spill).len() + staging_files(&dir).len();
        let resumed = bin()
            .arg("run")
            .arg(&dir)
            .arg("--resume")
            .args(args(&spill))
            .env("SPILLWAY_PG_URL", &url)
            .output()
            .unwrap();
        let resume_ok = resumed.status.success();
        let left = run_folders(&spill).len()
            + staging_files(&dir).len()
            + server
                .psql("tpch", "SELECT count(*) FROM pg_class WHERE relname LIKE '%spillway%'")
                .unwrap()
                .parse::<usize>()
                .unwrap();
        let equal = outputs(&dir, &server) == want;
        let results: Value =
            serde_json::from_slice(&std::fs::read(dir.join(".spillway/runs/latest/run_results.json")).unwrap())
                .unwrap();
        let reused = results["steps"].as_array().unwrap().iter().filter(|s| s.get("reused_from").is_some()).count();
        println!(
            "{point:<26} {:>6} {leaked:>8} {left:>8} {:>6} {:>6} {reused:>7}",
            if by_signal { "SIGKILL" } else { "exit" },
            resume_ok,
            equal
        );
        assert!(resume_ok, "{point}: resume failed: {}", String::from_utf8_lossy(&resumed.stderr));
        rows.push((point.clone(), left, equal));
    }
    let leaks: usize = rows.iter().map(|r| r.1).sum();
    let equal = rows.iter().filter(|r| r.2).count();
    println!(
        "points tried {}, leaks left after the next start {leaks}, resumes equal {equal}/{}",
        rows.len(),
        rows.len()
    );
    let distinct: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.0.split('@').next().unwrap_or_default()).collect();
    assert!(distinct.len() >= 20, "at least 20 distinct fault points: {points:?}");
    assert_eq!(leaks, 0, "{rows:?}");
    assert_eq!(equal, rows.len(), "{rows:?}");
}

/// Issue #13: running out of temp space fails cleanly with the numbers and cleans up: a tiny
/// quota, and (as root, where a tmpfs can be mounted) a really full small filesystem.
#[test]
fn issue_13_disk_full_fails_cleanly_and_cleans_up() {
    let dir = example_project("disk-full");
    let base = ["--memory", "48MiB", "--set", "sources.tpch.sf=0.1", "--jobs", "1", "--plain"];
    run(bin().arg("run").arg(&dir).args(base).arg("--spill-dir").arg(scratch().join("disk-full.ok")));
    let before: Vec<Vec<u8>> = FAULT_OUTPUTS.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    let unchanged =
        |dir: &Path| FAULT_OUTPUTS.iter().zip(&before).all(|(f, b)| &std::fs::read(dir.join(f)).unwrap() == b);

    let spill = scratch().join("disk-full.quota");
    let out = bin()
        .arg("run")
        .arg(&dir)
        .args(base)
        .args(["--max-spill", "1MiB", "--spill-dir"])
        .arg(&spill)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("temp-space quota") || text.contains("disk quota for temp files exceeded"), "{text}");
    assert!(text.contains("> quota 1MiB"), "the numbers: {text}");
    assert!(run_folders(&spill).is_empty() && staging_files(&dir).is_empty() && unchanged(&dir));

    if unsafe { libc::geteuid() } != 0 {
        return; // mounting a small filesystem needs root (CI runs as root)
    }
    let mnt = scratch().join("disk-full.tmpfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let _ = Command::new("umount").arg(&mnt).status();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(status.success(), "mount a 20MiB tmpfs at {}", mnt.display());
    // The quota above the disk's size: the filesystem itself runs out.
    let out =
        bin().arg("run").arg(&dir).args(base).args(["--max-spill", "1TiB", "--spill-dir"]).arg(&mnt).output().unwrap();
    let left = run_folders(&mnt);
    let free = String::from_utf8_lossy(&Command::new("df").arg("--output=used").arg(&mnt).output().unwrap().stdout)
        .to_string();
    let _ = Command::new("umount").arg(&mnt).status();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(left.is_empty(), "{left:?} ({free})");
    assert!(staging_files(&dir).is_empty() && unchanged(&dir));
}

/// Issue #13: 20 `spillway run` and `spillway sql` processes started at once, sharing one spill
/// dir: each finishes (none killed, none deleting another's live run folder), and nothing is
/// left behind.
#[test]
fn issue_13_twenty_processes_at_once_each_finish_cleanly() {
    let spill = scratch().join("twenty.spill");
    let _ = std::fs::remove_dir_all(&spill);
    let mut children = Vec::new();
    for i in 0..20 {
        let mut cmd = bin();
        if i % 2 == 0 {
            let dir = scratch().join(format!("twenty-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            run(bin().arg("init").arg(&dir));
            cmd.arg("run").arg(&dir).args(["--set", "sources.tpch.sf=0.01", "--plain"]);
        } else {
            cmd.args(["sql", "SELECT value FROM generate_series(1, 3000000) ORDER BY value DESC", "--max-rows", "1"]);
        }
        cmd.args(["--memory", "96MiB", "--spill-dir"])
            .arg(&spill)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), None, "process {i} was killed: {out:?}");
        assert!(out.status.success(), "process {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(run_folders(&spill).is_empty(), "{:?}", run_folders(&spill));
}

/// A bad input of the catalogue: what to change in a copy of the good project, the command, and
/// what the error must say.
struct BadInput {
    name: &'static str,
    /// Files to write (relative to the project), `None` content to delete.
    files: Vec<(&'static str, Option<String>)>,
    /// Arguments after `spillway` (`{dir}` is the project).
    args: Vec<String>,
    expect: Vec<String>,
}

fn bad(name: &'static str, files: Vec<(&'static str, Option<String>)>, args: &[&str], expect: &[&str]) -> BadInput {
    BadInput {
        name,
        files,
        args: args.iter().map(|s| s.to_string()).collect(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

const GOOD_TOML: &str = "[sources.items]\ntype = \"parquet\"\npath = \"data/items.parquet\"\n\n\
                         [sources.rows]\ntype = \"csv\"\npath = \"data/rows.csv\"\n\n\
                         [sinks.total]\nmodel = \"total\"\npath = \"out/total.parquet\"\n";

/// Issue #13: a catalogue of bad inputs, each run against a copy of a project whose outputs were
/// published by a good run: every one gets a one-line `error:` naming the file and line or the
/// setting, exit status 1, no panic, nothing left behind (no run folder, no staging file), and
/// the previous outputs intact.
#[test]
fn issue_13_bad_inputs_get_clear_errors_and_leave_everything_intact() {
    let server = spillway_postgres::testing::TestServer::start().unwrap();
    server.create_db("shop").unwrap();
    server.psql("shop", "CREATE TABLE items (v int)").unwrap();
    let base = scratch().join("bad-base");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("models")).unwrap();
    std::fs::create_dir_all(base.join("data")).unwrap();
    run(bin()
        .args(["sql", "SELECT value AS v, value % 7 AS g FROM range(1000)", "--memory", "64MiB", "--output"])
        .arg(base.join("data/items.parquet")));
    run(bin()
        .args(["sql", "SELECT value AS v FROM range(3)", "--memory", "64MiB", "--output"])
        .arg(base.join("data/x.arrow")));
    std::fs::write(base.join("data/rows.csv"), "a,b\n1,2\n3,4\n").unwrap();
    std::fs::write(base.join("spillway.toml"), GOOD_TOML).unwrap();
    std::fs::write(base.join("models/total.sql"), "SELECT count(*) AS n, sum(v) AS s FROM items").unwrap();
    let spill = scratch().join("bad.spill");
    run(bin().arg("run").arg(&base).args(["--memory", "128MiB", "--plain", "--spill-dir"]).arg(&spill));
    let published = std::fs::read(base.join("out/total.parquet")).unwrap();

    let toml = |head: &str, tail: &str| Some(format!("{head}{GOOD_TOML}{tail}"));
    let model = |sql: &str| vec![("models/bad.sql", Some(sql.to_string()))];
    let run_args = ["run", "{dir}"];
    let pg = server.url("shop");
    let wrong_password = pg.replace(spillway_postgres::testing::PASSWORD, "wrong");
    let pg_source = |url: &str, table: &str| {
        toml("", &format!("\n[sources.pgt]\ntype = \"postgres\"\nurl = \"{url}\"\ntable = \"{table}\"\n"))
    };
    let pg_model = vec![("models/reads_pg.sql", Some("SELECT count(*) AS n FROM pgt".to_string()))];
    let mut cases = vec![
        // spillway.toml
        bad("toml syntax", vec![("spillway.toml", toml("memory = \n", ""))], &run_args, &["spillway.toml:1:"]),
        bad("unknown key", vec![("spillway.toml", toml("max_spil = \"1GiB\"\n", ""))], &run_args, &["spillway.toml:1: unknown field `max_spil`"]),
        bad("wrong type", vec![("spillway.toml", toml("memory = 12\n", ""))], &run_args, &["spillway.toml:1: invalid type"]),
        bad("huge budget", vec![("spillway.toml", toml("memory = \"900TiB\"\n", ""))], &run_args, &["larger than the effective memory limit"]),
        bad("negative size", vec![("spillway.toml", toml("max_spill = \"-5GiB\"\n", ""))], &run_args, &["max_spill = \"-5GiB\""]),
        bad("tiny budget", vec![("spillway.toml", toml("memory = \"1MiB\"\n", ""))], &run_args, &["below the workable minimum"]),
        bad("percent over 100", vec![("spillway.toml", toml("memory = \"150%\"\n", ""))], &run_args, &["memory"]),
        bad("unknown governor key", vec![("spillway.toml", toml("[governor]\nheavy_slot = 2\n", ""))], &run_args, &["spillway.toml:2: unknown field `heavy_slot`"]),
        bad("governor headroom", vec![("spillway.toml", toml("[governor]\nheadroom = 2.0\n", ""))], &run_args, &["headroom"]),
        bad("unspillable reserve", vec![("spillway.toml", toml("[governor]\nunspillable_reserve = 5\n", ""))], &run_args, &["spillway.toml:1:", "unspillable_reserve must be between 0 and 0.9"]),
        bad("unknown profile", vec![("spillway.toml", toml("[governor.profiles]\nXL = \"10%\"\n", ""))], &run_args, &["unknown profile \"XL\""]),
        bad("contradictory pressure", vec![("spillway.toml", toml("[governor.pressure]\nmoderate = 0.9\nhigh = 0.5\ncritical = 0.95\n", ""))], &run_args, &["pressure"]),
        bad("bad default", vec![("spillway.toml", toml("[defaults]\nprofile = \"XXL\"\n", ""))], &run_args, &["spillway.toml:1: [defaults]: profile = \"XXL\""]),
        bad("unknown default", vec![("spillway.toml", toml("[defaults]\ncolour = \"red\"\n", ""))], &run_args, &["spillway.toml:2: unknown field `colour`"]),
        bad("settings of no model", vec![("spillway.toml", toml("[models.nope]\nclass = \"heavy\"\n", ""))], &run_args, &["spillway.toml:1: [models.nope]: there is no models/nope.sql"]),
        bad("sink without model", vec![("spillway.toml", toml("", "\n[sinks.x]\npath = \"out/x.parquet\"\n"))], &run_args, &["missing field `model`"]),
        bad("sink of no model", vec![("spillway.toml", toml("", "\n[sinks.x]\nmodel = \"ghost\"\npath = \"out/x.parquet\"\n"))], &run_args, &["spillway.toml:13: [sinks.x]: model \"ghost\" does not exist"]),
        bad("sink format", vec![("spillway.toml", toml("", "\n[sinks.x]\nmodel = \"total\"\npath = \"out/x.xlsx\"\n"))], &run_args, &["spillway.toml:13:", "unknown output type"]),
        bad("contradictory sink", vec![("spillway.toml", toml("", "\n[sinks.x]\nmodel = \"total\"\npath = \"out/x.parquet\"\ntable = \"t\"\n"))], &run_args, &["`table` is a postgres setting"]),
        bad("postgres sink without table", vec![("spillway.toml", toml("", "\n[sinks.x]\nmodel = \"total\"\ntype = \"postgres\"\nurl = \"postgresql://a@127.0.0.1:1/db\"\n"))], &run_args, &["needs `table`"]),
        bad("upsert without key", vec![("spillway.toml", toml("", "\n[sinks.x]\nmodel = \"total\"\ntype = \"postgres\"\nurl = \"postgresql://a@127.0.0.1:1/db\"\ntable = \"t\"\nmode = \"upsert\"\n"))], &run_args, &["needs `key`"]),
        bad("sink type", vec![("spillway.toml", toml("", "\n[sinks.x]\nmodel = \"total\"\ntype = \"s3\"\npath = \"x\"\n"))], &run_args, &["use file or postgres"]),
        bad("source type", vec![("spillway.toml", toml("", "\n[sources.x]\ntype = \"excel\"\npath = \"a\"\n"))], &run_args, &["unknown variant `excel`"]),
        bad("missing source file", vec![("spillway.toml", Some(GOOD_TOML.replace("data/items.parquet", "data/missing.parquet")))], &run_args, &["spillway.toml:1: [sources.items]:", "does not exist"]),
        bad("duplicate source", vec![("spillway.toml", toml("", "\n[sources.items]\ntype = \"csv\"\npath = \"data/rows.csv\"\n"))], &run_args, &["spillway.toml:", "duplicate key"]),
        bad("source named like a model", vec![("spillway.toml", toml("", "\n[sources.total]\ntype = \"csv\"\npath = \"data/rows.csv\"\n"))], &run_args, &["which is also a model"]),
        bad("negative scale factor", vec![("spillway.toml", toml("", "\n[sources.t]\ntype = \"tpch\"\nsf = -1\n"))], &run_args, &["spillway.toml:13: [sources.t]: sf = -1"]),
        bad("--set without =", vec![], &["run", "{dir}", "--set", "memory"], &["--set \"memory\": expected KEY=VALUE"]),
        bad("--set unknown key", vec![], &["run", "{dir}", "--set", "max_spil=1GiB"], &["--set max_spil=1GiB: unknown field `max_spil`"]),
        bad("--config missing", vec![], &["run", "{dir}", "--config", "/nowhere/spillway.toml"], &["/nowhere/spillway.toml: No such file"]),
        bad("--memory negative", vec![], &["run", "{dir}", "--memory=-5GiB"], &["--memory"]),
        // models
        bad("sql syntax", model("SELECT *\nFROM\n"), &run_args, &["models/bad.sql:"]),
        bad("unknown table", model("SELECT * FROM nowhere"), &run_args, &["models/bad.sql:1:", "nowhere"]),
        bad("unknown column", model("SELECT v,\n  nope\nFROM items"), &run_args, &["models/bad.sql:2:", "nope"]),
        bad("cycle", vec![("models/a.sql", Some("SELECT * FROM b".into())), ("models/b.sql", Some("SELECT * FROM a".into()))], &run_args, &["dependency cycle"]),
        bad("duplicate columns", model("SELECT v, v FROM items"), &run_args, &["models/bad.sql:1:", "unique expression names"]),
        bad("create table as", model("CREATE TABLE t AS SELECT 1 AS x"), &run_args, &["models/bad.sql:1: a model must be a SELECT"]),
        bad("copy to", model("COPY (SELECT 1 AS x) TO '/tmp/spillway-bad-copy.csv'"), &run_args, &["models/bad.sql:1: a model must be a SELECT"]),
        bad("set in a model", model("SET datafusion.execution.batch_size = 1"), &run_args, &["models/bad.sql:1: a model must be a SELECT"]),
        bad("bad model setting", model("-- spillway: class=medium\nSELECT 1 AS x"), &run_args, &["models/bad.sql:1: class = \"medium\""]),
        bad("no models", vec![("models/total.sql", None)], &["run", "{dir}"], &["models:1: no models"]),
        bad("check with rows", model("-- spillway: check\nSELECT 1 AS x"), &run_args, &["check bad failed"]),
        bad("runtime error", model("SELECT 1 / (v - v) AS x FROM items"), &run_args, &["bad", "Divide by zero"]),
        // data files
        bad("corrupt parquet", vec![("data/items.parquet", Some("not parquet at all".into()))], &run_args, &["spillway.toml:1: [sources.items]"]),
        bad("truncated parquet", vec![("data/items.parquet", Some(String::from_utf8_lossy(&std::fs::read(base.join("data/items.parquet")).unwrap()[..600]).into_owned()))], &run_args, &["[sources.items]"]),
        bad("csv row that does not parse", [model("SELECT sum(a) AS s FROM rows"), vec![("data/rows.csv", Some(format!("a,b\n{}oops,4\n", "1,2\n".repeat(2000))))]].concat(), &run_args, &["oops"]),
        bad("csv row with too many fields", [model("SELECT sum(a) AS s FROM rows"), vec![("data/rows.csv", Some("a,b\n1,2\n3,4,5\n".into()))]].concat(), &run_args, &["bad", "found 3 records at line 3"]),
        bad("corrupt arrow file", vec![("spillway.toml", toml("", "\n[sources.arr]\ntype = \"arrow\"\npath = \"data/x.arrow\"\n")), ("models/reads_arr.sql", Some("SELECT count(*) AS n FROM arr".into())), ("data/x.arrow", Some("ARROW1 but nothing else".into()))], &run_args, &["[sources.arr]"]),
        // PostgreSQL
        bad("unreachable postgres", [vec![("spillway.toml", pg_source("postgresql://nobody@127.0.0.1:1/db", "items"))], pg_model.clone()].concat(), &run_args, &["spillway.toml:13: [sources.pgt]:"]),
        bad("wrong password", [vec![("spillway.toml", pg_source(&wrong_password, "items"))], pg_model.clone()].concat(), &run_args, &["spillway.toml:13: [sources.pgt]:", "password"]),
        bad("missing postgres table", [vec![("spillway.toml", pg_source(&pg, "nope"))], pg_model.clone()].concat(), &run_args, &["spillway.toml:13: [sources.pgt]:", "does not exist"]),
        // spillway sql
        bad("sql set runtime", vec![], &["sql", "SET datafusion.runtime.memory_limit = '1G'; SELECT 1"], &["datafusion.runtime.memory_limit"]),
        bad("sql set execution", vec![], &["sql", "SET datafusion.execution.sort_spill_reservation_bytes = 1; SELECT 1"], &["sizes it from the memory lease"]),
        bad("sql copy to", vec![], &["sql", "COPY (SELECT 1 AS x) TO '/tmp/spillway-bad-copy.csv'"], &["use --output FILE"]),
        bad("sql missing table file", vec![], &["sql", "SELECT * FROM t", "--table", "t=/nowhere/x.parquet"], &["table \"t\""]),
        bad("sql output folder missing", vec![], &["sql", "SELECT 1 AS x", "--output", "/nowhere/out.parquet"], &["does not exist"]),
        bad("sql syntax", vec![], &["sql", "SELEC 1"], &["SELEC"]),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter_mut().enumerate() {
        let dir = scratch().join(format!("bad-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(Command::new("cp").arg("-r").arg(&base).arg(&dir).status().unwrap().success());
        for (file, content) in &case.files {
            match content {
                Some(c) => std::fs::write(dir.join(file), c).unwrap(),
                None => std::fs::remove_file(dir.join(file)).unwrap(),
            }
        }
        let spill = scratch().join(format!("bad-{i}.spill"));
        let args: Vec<String> = case.args.iter().map(|a| a.replace("{dir}", &dir.display().to_string())).collect();
        let mut cmd = bin();
        cmd.args(&args).current_dir(&dir).env_remove("SPILLWAY_MEMORY");
        if args[0] == "sql" {
            cmd.args(["--memory", "128MiB"]);
        }
        let out = cmd.arg("--spill-dir").arg(&spill).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        // The error from its `error:` line on (a failed check shows its first rows below it).
        let last =
            err.find("error: ").map_or_else(|| err.trim_end().to_string(), |at| err[at..].trim_end().to_string());
        let mut wrong = Vec::new();
        if out.status.code() != Some(1) {
            wrong.push(format!("exit {:?}", out.status.code()));
        }
        if err.contains("panicked") || !last.starts_with("error: ") || last.contains("bug in DataFusion") {
            wrong.push("no clear error".into());
        }
        for e in &case.expect {
            if !last.contains(e.as_str()) {
                wrong.push(format!("does not say {e:?}"));
            }
        }
        if !run_folders(&spill).is_empty() || !staging_files(&dir).is_empty() {
            wrong.push("left temp files behind".into());
        }
        if std::fs::read(dir.join("out/total.parquet")).ok().as_deref() != Some(published.as_slice()) {
            wrong.push("the previous output changed".into());
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n    {last}", case.name, wrong.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} bad inputs:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Child cgroups spillway made (`spillway-<pid>-...`) under this process's own memory cgroup.
fn child_cgroups() -> Vec<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())).unwrap();
    let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("spillway-"))
        .collect()
}

fn results_of(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(".spillway/runs/latest/run_results.json")).unwrap()).unwrap()
}

/// Issue #20: examples/tpch with every model isolated (each in a `spillway worker` child under
/// a cgroup v1 memory limit) publishes the same outputs as the in-process run; each step
/// records its child's pid, confinement, limit and peak; no cgroup and no temp file is left.
#[test]
fn isolate_examples_tpch_equals_the_in_process_run_and_leaves_nothing() {
    let mut sums = Vec::new();
    for (name, isolate) in [("iso-off", "false"), ("iso-on", "true")] {
        let dir = example_project(name);
        let spill = scratch().join(format!("{name}.spill"));
        let out = run(bin()
            .arg("run")
            .arg(&dir)
            .args(["--memory", "256MiB", "--set", "sources.tpch.sf=0.1", "--set"])
            .arg(format!("defaults.isolate={isolate}"))
            .args(["--plain", "--spill-dir"])
            .arg(&spill));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("9 ok, 0 failed, 0 skipped"), "{text}");
        let results = results_of(&dir);
        for step in results["steps"].as_array().unwrap() {
            let iso = &step["isolated"];
            if isolate == "true" {
                assert!(iso["pid"].as_u64().unwrap() > 0, "{step}");
                assert_eq!(iso["confinement"], "cgroup v1", "{step}");
                assert!(iso["peak_bytes"].as_u64().unwrap() > 0, "{step}");
                assert!(iso["peak_bytes"].as_u64() <= iso["limit_bytes"].as_u64(), "{step}");
                assert_eq!(iso["oom_killed"], false);
            } else {
                assert!(iso.is_null(), "{step}");
            }
        }
        if isolate == "true" {
            assert!(text.contains("isolated pid"), "the progress lines show the child: {text}");
            let html = std::fs::read_to_string(PathBuf::from(
                String::from_utf8_lossy(&run(bin().arg("report").arg(&dir)).stdout).trim(),
            ))
            .unwrap();
            assert!(html.contains("isolated: child pid"), "the report shows the child");
        }
        assert!(run_folders(&spill).is_empty(), "{:?}", run_folders(&spill));
        sums.push(FAULT_OUTPUTS.iter().map(|f| file_checksum(&dir.join(f))).collect::<Vec<_>>());
    }
    assert_eq!(sums[0], sums[1], "isolated and in-process outputs are equal");
    let left: Vec<String> = child_cgroups().into_iter().filter(|n| !n.contains("probe")).collect();
    let mine = std::process::id().to_string();
    assert!(left.iter().all(|n| !n.starts_with(&format!("spillway-{mine}-"))), "{left:?}");
}

/// Issue #20: a child that allocates past its cgroup's limit (a 1GB string under a 64MiB
/// lease: memory no DataFusion pool tracks) is OOM-killed, reported as `oom-killed` with its
/// limit and peak, retried once disk-first with a larger lease, killed again; the independent
/// model completes; no cgroup, no temp file is left.
#[test]
fn isolate_oom_killed_child_is_reported_retried_and_the_run_goes_on() {
    let dir = scratch().join("iso-oom");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("models/hog.sql"),
        "-- spillway: isolate=true profile=64MiB\nSELECT max(length(repeat('x', 1000000000 + CAST(value AS INT)))) AS n FROM range(1)\n",
    )
    .unwrap();
    std::fs::write(dir.join("models/fine.sql"), "-- spillway: isolate=true\nSELECT count(*) AS n FROM range(100000)\n")
        .unwrap();
    let spill = scratch().join("iso-oom.spill");
    let out =
        bin().arg("run").arg(&dir).args(["--memory", "1GiB", "--plain", "--spill-dir"]).arg(&spill).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("1 ok, 1 failed"), "{text}");
    assert!(text.contains("retry hog") && text.contains("oom-killed"), "{text}");
    let results = results_of(&dir);
    let steps = results["steps"].as_array().unwrap();
    let hog = steps.iter().find(|s| s["name"] == "hog").unwrap();
    let error = hog["error"].as_str().unwrap();
    assert!(error.contains("oom-killed") && error.contains("memory limit of"), "{error}");
    assert_eq!(hog["attempts"], 2, "retried once: {hog}");
    let iso = &hog["isolated"];
    assert_eq!(iso["oom_killed"], true);
    let (peak, limit) = (iso["peak_bytes"].as_u64().unwrap(), iso["limit_bytes"].as_u64().unwrap());
    assert!(peak as f64 >= limit as f64 * 0.9 && peak <= limit, "peak {peak} at the limit {limit}");
    assert!(limit > (64 + 96) << 20, "the retry had a larger lease: {limit}");
    let fine = steps.iter().find(|s| s["name"] == "fine").unwrap();
    assert_eq!(fine["status"], "ok", "{fine}");
    assert!(run_folders(&spill).is_empty(), "{:?}", run_folders(&spill));
    let mine = format!("spillway-{}-", std::process::id());
    assert!(child_cgroups().iter().all(|n| !n.starts_with(&mine)));
}

/// Issue #20: without a writable cgroup (forced here with SPILLWAY_ISOLATION=rlimit) an
/// isolated model runs under rlimits and its own governor, and `spillway info` says so.
#[test]
fn isolate_falls_back_to_rlimits_without_a_cgroup() {
    let out = run(bin().arg("info").env("SPILLWAY_ISOLATION", "rlimit"));
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("isolation     rlimits (RLIMIT_DATA"), "{info}");
    let out = run(bin().arg("info"));
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("isolation     cgroup v1 memory cgroup per isolated model"), "{info}");
    let dir = scratch().join("iso-rlimit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("models/sorted.sql"),
        "-- spillway: isolate=true profile=48MiB\nSELECT value FROM range(2000000) ORDER BY value DESC\n",
    )
    .unwrap();
    std::fs::write(dir.join("models/top.sql"), "SELECT max(value) AS top, count(*) AS n FROM sorted\n").unwrap();
    std::fs::write(dir.join("spillway.toml"), "[sinks.top]\nmodel = \"top\"\npath = \"top.csv\"\n").unwrap();
    run(bin().arg("run").arg(&dir).args(["--memory", "256MiB", "--plain"]).env("SPILLWAY_ISOLATION", "rlimit"));
    let results = results_of(&dir);
    let sorted = results["steps"].as_array().unwrap().iter().find(|s| s["name"] == "sorted").unwrap().clone();
    assert_eq!(sorted["isolated"]["confinement"], "rlimit", "{sorted}");
    assert!(sorted["isolated"]["peak_bytes"].is_null());
    assert!(sorted["spilled_bytes"].as_u64().unwrap() > 0, "the child's sort spilled in its lease: {sorted}");
    assert_eq!(std::fs::read_to_string(dir.join("top.csv")).unwrap(), "top,n\n1999999,2000000\n");
}

/// Issue #20: ten `spillway sql` processes, each asking for 40% of a 1GiB machine budget through
/// one ledger, run at most two at a time (the ledger never holds more than the machine's
/// leasable bytes) and all finish; `spillway info` lists who holds what.
#[test]
fn ledger_ten_processes_at_40_percent_share_one_machine_budget() {
    let ledger = scratch().join("ledger-ten");
    let _ = std::fs::remove_file(&ledger);
    let machine = ["--machine-memory", "1GiB", "--ledger"];
    let capacity = ((1u64 << 30) as f64 * 0.85) as u64;
    let mut children = Vec::new();
    for _ in 0..10 {
        let mut cmd = bin();
        cmd.args(["sql", "SELECT value FROM generate_series(1, 2000000) ORDER BY value DESC", "--max-rows", "1"])
            .args(["--memory", "480MiB"])
            .args(machine)
            .arg(&ledger)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (ledger, done) = (ledger.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut most_bytes, mut most_holders, mut listed) = (0u64, 0usize, false);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&ledger).unwrap_or_default();
                let entries: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(5, ' ').collect()).collect();
                let bytes: u64 = entries.iter().filter_map(|e| e.get(3)?.parse::<u64>().ok()).sum();
                most_bytes = most_bytes.max(bytes);
                most_holders = most_holders.max(entries.len());
                if !listed && !entries.is_empty() {
                    let out = bin().arg("info").args(machine).arg(&ledger).output().unwrap();
                    let info = String::from_utf8_lossy(&out.stdout).to_string();
                    listed = info.contains("pid ") && info.contains("spillway sql SELECT value");
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (most_bytes, most_holders, listed)
        })
    };
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), None, "process {i} was killed: {out:?}");
        assert!(out.status.success(), "process {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most_bytes, most_holders, listed) = watcher.join().unwrap();
    assert!(most_bytes <= capacity, "the ledger held {most_bytes} > {capacity}");
    assert!((1..=2).contains(&most_holders), "at most two 40% leases at once: {most_holders}");
    assert!(listed, "spillway info lists the holders");
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), "", "every lease came back");
}

/// A PostgreSQL server with a database `shop` holding `orders(id, customer)`, 50000 rows.
fn shop_server() -> spillway_postgres::testing::TestServer {
    let server = spillway_postgres::testing::TestServer::start().unwrap();
    server.create_db("shop").unwrap();
    server
        .psql("shop", "CREATE TABLE orders AS SELECT g AS id, g % 7 AS customer FROM generate_series(1, 50000) g")
        .unwrap();
    server
}

/// `shop.totals`, loaded by a run, equals PostgreSQL's own count and sum of `orders` by customer.
fn assert_totals_match(server: &spillway_postgres::testing::TestServer) {
    let sum = |sql: &str| server.psql("shop", sql).unwrap();
    assert_eq!(
        sum("SELECT string_agg(customer || ':' || n || ':' || s, ',' ORDER BY customer) FROM totals"),
        sum("SELECT string_agg(customer || ':' || n || ':' || s, ',' ORDER BY customer) FROM \
             (SELECT customer, count(*) AS n, sum(id) AS s FROM orders GROUP BY customer) t")
    );
}

/// Issue #20: an isolated model reading a PostgreSQL source (staged to IPC for its child by the
/// runner, which holds the connection) and ending in a PostgreSQL sink gives the in-process
/// answer; the child's folder, with the staged table, is gone afterwards.
#[test]
fn isolate_reads_a_postgres_source_and_ends_in_postgres() {
    let server = shop_server();
    let dir = scratch().join("iso-pg");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("spillway.toml"),
        "[sources.orders]\ntype = \"postgres\"\nurl_env = \"SHOP_URL\"\ntable = \"orders\"\n\n\
         [sinks.totals_pg]\nmodel = \"totals\"\ntype = \"postgres\"\nurl_env = \"SHOP_URL\"\ntable = \"totals\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/totals.sql"),
        "-- spillway: isolate=true\nSELECT customer, count(*) AS n, sum(id) AS s FROM orders GROUP BY customer\n",
    )
    .unwrap();
    let spill = scratch().join("iso-pg.spill");
    let out = run(bin()
        .arg("run")
        .arg(&dir)
        .args(["--memory", "256MiB", "--plain", "--spill-dir"])
        .arg(&spill)
        .env("SHOP_URL", server.url("shop")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 ok, 0 failed") && text.contains("isolated pid"), "{text}");
    assert_totals_match(&server);
    assert!(run_folders(&spill).is_empty(), "{:?}", run_folders(&spill));
}

/// `spillway cluster up` in the background: its URL, read from the line it prints once every
/// executor listens; stopped with SIGTERM (as Ctrl-C), returning all it printed.
struct ClusterUp {
    child: std::process::Child,
    url: String,
    printed: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ClusterUp {
    fn start(executors: usize, memory: &str, spill: &Path) -> ClusterUp {
        use std::io::BufRead;
        let mut child = bin()
            .args(["cluster", "up", "--port", "0", "--executors", &executors.to_string(), "--memory", memory])
            .arg("--spill-dir")
            .arg(spill)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = printed.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some(rest) = line.split("cluster up at ").nth(1) {
                    let _ = tx.send(rest.split(':').take(3).collect::<Vec<_>>().join(":"));
                }
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let url = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the cluster came up");
        ClusterUp { child, url, printed, reader: Some(reader) }
    }

    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let text = self.printed.lock().unwrap().clone();
        assert!(status.success(), "cluster up ended with {status}: {text}");
        text
    }
}

impl Drop for ClusterUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The models of examples/tpch run on the cluster: the heavy one (the big join) and two that
/// read it or lineitem and publish sinks.
const CLUSTER_MODELS: [&str; 3] = ["order_lines", "revenue_by_nation_month", "shipping_delays"];

/// Issue #21: a scheduler and two executors over loopback (`spillway cluster up`) run the
/// example's heavy models; every output equals the local run's; run_results.json, the progress
/// lines and the report name each job; `plan` says what crosses and how; stopping the cluster
/// reports each executor's peak within its share and leaves no work folder or cgroup.
#[test]
fn ballista_cluster_runs_the_example_heavy_models_equal_to_local() {
    let cluster_spill = scratch().join("bal-cluster-up.spill");
    let _ = std::fs::remove_dir_all(&cluster_spill);
    let cluster = ClusterUp::start(2, "1GiB", &cluster_spill);
    assert!(cluster.url.starts_with("df://127.0.0.1:"), "{}", cluster.url);
    let mut sums = Vec::new();
    for (name, on_cluster) in [("bal-local", false), ("bal-cluster", true)] {
        let dir = example_project(name);
        let spill = scratch().join(format!("{name}.spill"));
        let mut sets = vec!["sources.tpch.sf=0.1".to_string()];
        if on_cluster {
            sets.push(format!("engine.url={}", cluster.url));
            sets.extend(CLUSTER_MODELS.iter().map(|m| format!("models.{m}.engine=ballista")));
        }
        let set_args: Vec<String> = sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect();
        let out = run(bin()
            .arg("run")
            .arg(&dir)
            .args(["--memory", "256MiB", "--plain"])
            .args(&set_args)
            .arg("--spill-dir")
            .arg(&spill));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("9 ok, 0 failed, 0 skipped"), "{text}");
        let results = results_of(&dir);
        for step in results["steps"].as_array().unwrap() {
            let there = CLUSTER_MODELS.contains(&step["name"].as_str().unwrap());
            let job = &step["cluster"];
            match on_cluster && there {
                true => {
                    assert_eq!(job["url"], cluster.url.as_str(), "{step}");
                    assert!(!job["job_id"].as_str().unwrap().is_empty(), "{step}");
                    assert!(job["total_ms"].as_u64().unwrap() > 0, "{step}");
                }
                false => assert!(job.is_null(), "{step}"),
            }
        }
        if on_cluster {
            assert!(text.contains("order_lines on the Ballista cluster at df://"), "{text}");
            assert!(text.contains("ballista job "), "{text}");
            let html = std::fs::read_to_string(PathBuf::from(
                String::from_utf8_lossy(&run(bin().arg("report").arg(&dir)).stdout).trim(),
            ))
            .unwrap();
            assert!(html.contains("ballista job "), "the report names the job");
            let plan = run(bin().arg("plan").arg(&dir).args(&set_args));
            let plan = String::from_utf8_lossy(&plan.stdout);
            assert!(plan.contains(&format!("cluster {} (Ballista): order_lines,", cluster.url)), "{plan}");
            assert!(plan.contains("revenue_by_nation_month reads customer_nation: handed off as Parquet"), "{plan}");
            assert!(plan.contains("sink shipping_delays: written here"), "{plan}");
            // customer_nation is read on the cluster: handed off as Parquet, saying why.
            let cn = results["steps"].as_array().unwrap().iter().find(|s| s["name"] == "customer_nation").unwrap();
            assert_eq!(cn["tier"], "parquet", "{cn}");
            assert!(cn["tier_reason"].as_str().unwrap().contains("Ballista"), "{cn}");
        }
        assert!(run_folders(&spill).is_empty(), "{:?}", run_folders(&spill));
        sums.push(FAULT_OUTPUTS.iter().map(|f| file_checksum(&dir.join(f))).collect::<Vec<_>>());
    }
    assert_eq!(sums[0], sums[1], "outputs on the cluster equal the local run's");
    let pid = cluster.child.id().to_string();
    let text = cluster.stop();
    for id in ["executor-1", "executor-2"] {
        let line =
            text.lines().find(|l| l.starts_with(&format!("stopped {id}: peak "))).unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with("of its 512MiB share"), "{line}");
    }
    assert!(text.contains("share 512MiB (cgroup v1 limit 512MiB)"), "{text}");
    assert!(run_folders(&cluster_spill).is_empty(), "{:?}", run_folders(&cluster_spill));
    let left: Vec<String> =
        child_cgroups().into_iter().filter(|n| n.starts_with(&format!("spillway-{pid}-"))).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue #21: a model on a cluster that is not there fails the run before any work starts, in
/// one line naming the URL and what to do.
#[test]
fn ballista_cluster_down_is_a_clear_error_before_any_work() {
    let dir = scratch().join("bal-down");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("models/local_one.sql"), "SELECT value AS v FROM range(10)").unwrap();
    std::fs::write(
        dir.join("models/remote_one.sql"),
        "-- spillway: engine=ballista\nSELECT count(*) AS n FROM local_one",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("df://127.0.0.1:{port}");
    let err = fail(bin().arg("run").arg(&dir).args(["--memory", "128MiB", "--set"]).arg(format!("engine.url={url}")));
    assert!(err.contains(&format!("the Ballista cluster at {url} is not reachable")), "{err}");
    assert!(err.contains("spillway cluster up"), "{err}");
    assert!(!dir.join(".spillway/runs").exists(), "no run was started");
    let err = fail(bin().arg("plan").arg(&dir).args(["--set", "engine.url=http://x:1"]));
    assert!(err.contains("[engine]: url = \"http://x:1\"") && err.contains("df://host:port"), "{err}");
}

/// Issue #21: a model on the cluster reading a PostgreSQL source (read here, where the
/// connection is, and staged through Parquet for the executors) and ending in a PostgreSQL sink
/// (loaded from here) gives PostgreSQL's own answer; `plan` says which side does what; the staged
/// file is gone afterwards.
#[test]
fn ballista_model_reads_postgres_through_parquet_and_ends_in_postgres() {
    let server = shop_server();
    let dir = scratch().join("bal-pg");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let cluster_spill = scratch().join("bal-pg-up.spill");
    let cluster = ClusterUp::start(1, "512MiB", &cluster_spill);
    std::fs::write(
        dir.join("spillway.toml"),
        format!(
            "[engine]\ntype = \"ballista\"\nurl = \"{}\"\n\n\
             [sources.orders]\ntype = \"postgres\"\nurl_env = \"SHOP_URL\"\ntable = \"orders\"\n\n\
             [sinks.totals_pg]\nmodel = \"totals\"\ntype = \"postgres\"\nurl_env = \"SHOP_URL\"\ntable = \"totals\"\n",
            cluster.url
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/totals.sql"),
        "SELECT customer, count(*) AS n, sum(id) AS s FROM orders GROUP BY customer\n",
    )
    .unwrap();
    let plan = run(bin().arg("plan").arg(&dir).env("SHOP_URL", server.url("shop")));
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("totals reads source table orders: PostgreSQL, read here and staged through Parquet"),
        "{plan}"
    );
    assert!(plan.contains("totals sink totals_pg: written here"), "{plan}");
    let spill = scratch().join("bal-pg.spill");
    let out = run(bin()
        .arg("run")
        .arg(&dir)
        .args(["--memory", "256MiB", "--plain", "--spill-dir"])
        .arg(&spill)
        .env("SHOP_URL", server.url("shop")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 ok, 0 failed") && text.contains("ballista job "), "{text}");
    let results = results_of(&dir);
    let staged = &results["steps"][0]["cluster"]["staged"];
    assert_eq!(staged[0][0], "orders", "{staged}");
    assert!(staged[0][1].as_u64().unwrap() > 0, "{staged}");
    assert_totals_match(&server);
    assert!(run_folders(&spill).is_empty(), "{:?}", run_folders(&spill));
    cluster.stop();
}
