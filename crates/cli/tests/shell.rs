//! End-to-end tests of `spillway sql` as a shell (issue #19).
//!
//! - `pty_*`: the interactive shell through a pseudo-terminal (expectrl): statements over
//!   several lines, completion, Ctrl-C cancelling a running statement, history across sessions.
//! - `script_*`: `-f FILE`, standard input, an SQL argument starting with `--`, every
//!   `--format`, errors naming the file and line.
//! - `project_*`: `--project DIR`: sources, the last run's outputs and views by name.

use expectrl::session::OsSession as Session;
use expectrl::{Eof, Expect, Regex};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env_remove("SPILLWAY_MEMORY").env_remove("SPILLWAY_HISTORY").env("SPILLWAY_LOG", "warn");
    c
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shell-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small CSV table `people` in `dir`.
fn people(dir: &Path) -> String {
    let path = dir.join("people.csv");
    std::fs::write(&path, "customer_name,amount\nalice,10\nbob,20\nzelda,5\n").unwrap();
    format!("people={}", path.display())
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked"), "must not panic: {stderr}");
    (out.status.success(), stdout, stderr)
}

fn ok(cmd: &mut Command) -> (String, String) {
    let (success, stdout, stderr) = output(cmd);
    assert!(success, "command failed: {cmd:?}\nstdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

/// The shell at a pseudo-terminal, with `args` after `spillway sql`.
fn shell(args: &[&str]) -> Session {
    let mut cmd = bin();
    cmd.env("TERM", "xterm").arg("sql").args(["--memory", "64MiB"]).args(args);
    let mut s = Session::spawn(cmd).unwrap();
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    s.expect("spillway> ").unwrap();
    s
}

/// Leaves with Ctrl-D and checks the shell exited cleanly.
fn leave(mut s: Session) {
    s.send([4u8]).unwrap();
    s.expect(Eof).unwrap();
    let status = s.get_process_mut().wait().unwrap();
    assert!(format!("{status:?}").contains("Exited") && format!("{status:?}").ends_with(", 0)"), "{status:?}");
}

#[test]
fn pty_multi_line_statements_completion_and_history_across_sessions() {
    let dir = scratch("pty-history");
    let table = people(&dir);
    let history = dir.join("history");
    let history_arg = history.to_str().unwrap();

    let mut s = shell(&["--table", &table, "--history", history_arg]);
    // One statement over three lines: Enter before the `;` continues it.
    s.send("SELECT count(*) AS n,\r").unwrap();
    s.send("  sum(amount) AS total\r").unwrap();
    s.send("FROM people;\r").unwrap();
    s.expect(Regex(r"\b3\b.*\b35\b")).unwrap();
    s.expect(Regex(r"1 row in [0-9.]+s · peak resident .* of 64MiB budget")).unwrap();
    s.expect("spillway> ").unwrap();
    // Tab completes a column and a table: `custo<Tab>` and `peo<Tab>`; the query only runs if
    // both were completed.
    s.send("SELECT max(custo").unwrap();
    s.send("\t").unwrap();
    s.send(") AS last FROM peo").unwrap();
    s.send("\t").unwrap();
    s.send(";\r").unwrap();
    s.expect("zelda").unwrap();
    s.expect("spillway> ").unwrap();
    // The shell commands.
    s.send(".tables\r").unwrap();
    s.expect(Regex("people.*customer_name, amount")).unwrap();
    s.expect("spillway> ").unwrap();
    s.send("\\d people\r").unwrap();
    s.expect(Regex("amount.*Int64")).unwrap();
    s.expect("spillway> ").unwrap();
    // An error is printed and the shell goes on; the guard of every path holds here too.
    s.send("SELECT nope FROM people;\r").unwrap();
    s.expect(Regex("error: .*nope")).unwrap();
    s.expect("spillway> ").unwrap();
    s.send("SET datafusion.runtime.memory_limit = '10G';\r").unwrap();
    s.expect(Regex("error: .*datafusion.runtime.memory_limit")).unwrap();
    s.expect("spillway> ").unwrap();
    leave(s);

    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("max(customer_name) AS last FROM people"), "{saved}");

    // A new session reads the history: Up five times brings back the `max` query (after it came
    // `.tables`, `\d people` and the two refused statements).
    let mut s = shell(&["--table", &table, "--history", history_arg]);
    s.send("\x1b[A").unwrap();
    s.send("\x1b[A").unwrap();
    s.send("\x1b[A").unwrap();
    s.send("\x1b[A").unwrap();
    s.send("\x1b[A").unwrap();
    s.send("\r").unwrap();
    s.expect("zelda").unwrap();
    s.expect("spillway> ").unwrap();
    leave(s);
}

#[test]
fn pty_ctrl_c_cancels_a_running_statement_and_the_shell_goes_on() {
    let dir = scratch("pty-ctrl-c");
    let spill = dir.join("spill");
    let null_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata("/dev/null").unwrap().permissions());
    // `--history /dev/null` keeps no history (and leaves the device alone).
    let mut s = shell(&["--spill-dir", spill.to_str().unwrap(), "--history", "/dev/null"]);
    // A sort far larger than 64MiB: it spills, and would run for many minutes.
    s.send("SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC;\r").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    s.send([3u8]).unwrap();
    s.expect("cancelled").unwrap();
    s.expect("spillway> ").unwrap();
    // The shell still runs statements, under the same lease.
    s.send("SELECT 40 + 2 AS answer;\r").unwrap();
    s.expect(Regex(r"\| 42 +\|")).unwrap();
    s.expect("spillway> ").unwrap();
    // Ctrl-C at the prompt clears the line and does not leave.
    s.send("SELECT 'half typed").unwrap();
    s.send([3u8]).unwrap();
    s.expect("spillway> ").unwrap();
    s.send("SELECT 4200 + 42 AS again;\r").unwrap();
    s.expect(Regex(r"\| 4242 +\|")).unwrap();
    s.expect("spillway> ").unwrap();
    leave(s);
    let left: Vec<_> =
        std::fs::read_dir(spill.join("spillway")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "the cancelled sort's spill files must be gone: {left:?}");
    let after = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata("/dev/null").unwrap().permissions());
    assert_eq!(after, null_mode, "/dev/null must keep its mode");
}

#[test]
fn script_interrupted_by_sigint_cleans_up_and_exits_130() {
    let dir = scratch("sigint");
    let spill = dir.join("spill");
    let child = bin()
        .args(["sql", "--memory", "64MiB", "--spill-dir"])
        .arg(&spill)
        .arg("SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the sort has spilled (more than 1MiB in the spill folder).
    fn bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    let spilled = || bytes(&spill) > 1 << 20;
    let waited = std::time::Instant::now();
    while !spilled() && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(spilled(), "the sort must have spilled");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "interrupted");
    let left: Vec<_> = std::fs::read_dir(spill.join("spillway")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "nothing may be left in the spill folder: {left:?}");
}

#[test]
fn script_file_with_comments_and_several_statements() {
    let dir = scratch("script-file");
    let table = people(&dir);
    let file = dir.join("report.sql");
    std::fs::write(
        &file,
        "-- totals first\nSELECT count(*) AS n FROM people;\n\n/* then the top one;\n   a block comment */\n.mode csv\nSELECT customer_name, amount -- the biggest\nFROM people ORDER BY amount DESC LIMIT 1;\n",
    )
    .unwrap();
    let (stdout, stderr) = ok(bin().args(["sql", "--memory", "64MiB", "--table", &table, "-f"]).arg(&file));
    assert!(stdout.starts_with('+') && stdout.contains("| 3 |"), "the first result is a table: {stdout}");
    assert!(stdout.ends_with("customer_name,amount\nbob,20\n"), "{stdout}");
    assert_eq!(stderr.matches(" row").count(), 2, "a status line per statement: {stderr}");

    // An error names the file and the line the failing statement starts on; nothing after it runs.
    std::fs::write(
        &file,
        "SELECT 1 AS one;\n-- next\n\nSELECT\n  no_such_column\nFROM people;\nSELECT 'never' AS x;\n",
    )
    .unwrap();
    let (success, stdout, stderr) =
        output(bin().args(["sql", "--memory", "64MiB", "--table", &table, "-f"]).arg(&file));
    assert!(!success);
    assert!(stderr.contains(&format!("{}:4", file.display())) && stderr.contains("no_such_column"), "{stderr}");
    assert!(!stdout.contains("never"), "{stdout}");
    // The parser's own position is the file's.
    std::fs::write(&file, "SELECT 1 AS one;\n\n  SELEC 2;\n").unwrap();
    let (success, _, stderr) = output(bin().args(["sql", "--memory", "64MiB", "-f"]).arg(&file));
    assert!(
        !success && stderr.contains(&format!("{}:3", file.display())) && stderr.contains("Line: 3, Column: 3"),
        "{stderr}"
    );
    let e = output(bin().args(["sql", "--memory", "64MiB", "-f"]).arg(dir.join("missing.sql")));
    assert!(!e.0 && e.2.contains("missing.sql"), "{}", e.2);
}

#[test]
fn script_from_stdin_piped_and_dash() {
    for args in [
        &["sql", "--memory", "64MiB"][..],
        &["sql", "--memory", "64MiB", "-"],
        &["sql", "--memory", "64MiB", "-f", "-"],
    ] {
        let mut child =
            bin().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"-- from a pipe\nSELECT 6 * 7 AS answer;\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("answer") && stdout.contains("42"), "{args:?}: {stdout}");
    }
    // Empty input is an error, not a silent success.
    let mut child =
        bin().args(["sql", "--memory", "64MiB", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no SQL statement"));
}

#[test]
fn script_argument_that_starts_with_a_comment() {
    let sql = "-- q6, as a file starts\nSELECT 1 + 1 AS two";
    let (stdout, _) = ok(bin().args(["sql", "--memory", "64MiB", sql]));
    assert!(stdout.contains("two") && stdout.contains('2'), "{stdout}");
    // After `--` everything is SQL, flags included.
    let (stdout, _) = ok(bin().args(["sql", "--memory", "64MiB", "--", "--comment\nSELECT 3 AS three"]));
    assert!(stdout.contains("three"), "{stdout}");
}

#[test]
fn script_every_format() {
    let dir = scratch("formats");
    let table = people(&dir);
    let q = "SELECT customer_name, amount FROM people ORDER BY amount";
    let run = |format: &str, sql: &str| {
        ok(bin().args(["sql", "--memory", "64MiB", "--table", &table, "--format", format, sql])).0
    };
    assert_eq!(run("csv", q), "customer_name,amount\nzelda,5\nalice,10\nbob,20\n");
    assert_eq!(
        run("ndjson", q),
        "{\"customer_name\":\"zelda\",\"amount\":5}\n{\"customer_name\":\"alice\",\"amount\":10}\n{\"customer_name\":\"bob\",\"amount\":20}\n"
    );
    let json: serde_json::Value = serde_json::from_str(&run("json", q)).unwrap();
    assert_eq!(json[2]["customer_name"], "bob");
    assert_eq!(json.as_array().unwrap().len(), 3);
    let table_out = run("table", q);
    assert!(table_out.contains("| customer_name | amount |") && table_out.contains("| zelda"), "{table_out}");
    // Empty results keep their shape.
    let none = "SELECT customer_name FROM people WHERE amount > 100";
    assert_eq!(run("csv", none), "customer_name\n");
    assert_eq!(run("json", none).trim(), "[]");
    assert_eq!(run("ndjson", none), "");
    // The same guard as every path.
    let (success, _, stderr) = output(bin().args([
        "sql",
        "--memory",
        "64MiB",
        "--format",
        "csv",
        "SET datafusion.runtime.memory_limit = '1G'; SELECT 1",
    ]));
    assert!(!success && stderr.contains("datafusion.runtime.memory_limit"), "{stderr}");
}

#[test]
fn project_sources_outputs_and_views_by_name() {
    let dir = scratch("project");
    for d in ["data", "models", "views"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("spillway.toml"),
        "memory = \"256MiB\"\n\n[sources.orders]\ntype = \"csv\"\npath = \"data/orders.csv\"\nkey = [\"id\"]\n\n[sinks.big]\nmodel = \"big_orders\"\npath = \"output/big_orders.parquet\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("data/orders.csv"), "id,customer,amount\n1,alice,10\n2,bob,20\n3,alice,5\n4,carol,70\n")
        .unwrap();
    std::fs::write(dir.join("models/big_orders.sql"), "SELECT id, customer, amount FROM orders WHERE amount >= 20\n")
        .unwrap();
    std::fs::write(
        dir.join("views/revenue.sql"),
        "SELECT customer, sum(amount) AS revenue FROM orders GROUP BY customer\n",
    )
    .unwrap();
    ok(bin().arg("run").arg(&dir).arg("--plain"));
    let sql = "SELECT (SELECT count(*) FROM orders) AS sources, (SELECT count(*) FROM big_orders) AS outputs, \
               (SELECT revenue FROM revenue WHERE customer = 'alice') AS alice";
    let (stdout, _) = ok(bin().args(["sql", "--format", "csv", "--project"]).arg(&dir).arg(sql));
    assert_eq!(stdout, "sources,outputs,alice\n4,2,15\n");
    // A published file that changed since the run is left out, and the shell says why.
    std::fs::write(dir.join("output/big_orders.parquet"), b"not parquet").unwrap();
    let (stdout, stderr) =
        ok(bin().args(["sql", "--format", "csv", "--project"]).arg(&dir).arg("SELECT count(*) AS n FROM orders"));
    assert_eq!(stdout, "n\n4\n");
    assert!(stderr.contains("big_orders") && stderr.contains("changed since run"), "{stderr}");
}

#[test]
fn script_explain_analyze_shows_the_grace_join_buckets_and_spills() {
    let sql = "EXPLAIN ANALYZE SELECT count(*) AS n FROM range(2000000) a JOIN range(2000000) b ON a.value = b.value";
    let (stdout, stderr) = ok(bin().args(["sql", "--memory", "32MiB", "--max-rows", "0", sql]));
    assert!(stdout.contains("GraceHashJoinExec") && stdout.contains("buckets="), "{stdout}");
    assert!(stdout.contains("spilled_bytes="), "{stdout}");
    assert!(stderr.contains("join(s) out of core") && !stderr.contains("spilled 0B"), "{stderr}");
}

/// An idle interactive shell holds one step of the machine, not its whole budget: on a machine
/// (a ledger) the size of the shell's budget, `spillway sql` started beside it gets its lease and
/// finishes at once, and the shell still runs a statement after it.
#[test]
fn pty_an_idle_shell_leaves_the_machine_to_the_processes_beside_it() {
    let dir = scratch("pty-beside");
    let ledger = dir.join("ledger");
    let mut cmd = bin();
    cmd.env("TERM", "xterm").env("SPILLWAY_LEDGER", &ledger).env("SPILLWAY_MACHINE_MEMORY", "256MiB");
    cmd.args(["sql", "--memory", "256MiB"]);
    let mut s = Session::spawn(cmd).unwrap();
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    s.expect("spillway> ").unwrap();
    let held: u64 = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(3).and_then(|b| b.parse::<u64>().ok()))
        .sum();
    assert!(held > 0 && held <= 16 << 20, "the idle shell holds {held} bytes of the machine");
    let mut beside = bin()
        .env("SPILLWAY_LEDGER", &ledger)
        .env("SPILLWAY_MACHINE_MEMORY", "256MiB")
        .args(["sql", "--memory", "128MiB", "SELECT 41 + 1 AS answer"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while beside.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() > 60 {
            let _ = beside.kill();
            panic!("spillway sql beside an idle shell still waits after a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = beside.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"));
    s.send("SELECT sum(x) FROM (SELECT * FROM generate_series(1, 100000) t(x) ORDER BY x DESC);\r").unwrap();
    s.expect(Regex(r"\b5000050000\b")).unwrap();
    s.expect("spillway> ").unwrap();
    leave(s);
}
