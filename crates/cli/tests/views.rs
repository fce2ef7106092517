//! End-to-end tests of `spillway views`: a project with a keyed CSV source, change files, views
//! over the source and over a view, contents and changelog sinks; kills at the commit point and
//! while publishing; bad change files; views that cannot be maintained.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env_remove("SPILLWAY_MEMORY").env_remove("SPILLWAY_FAULT").env("SPILLWAY_LOG", "warn");
    c
}

fn project(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("views-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["data", "views", "changes/orders"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("spillway.toml"),
        r#"memory = "256MiB"

[sources.orders]
type = "csv"
path = "data/orders.csv"
key = ["id"]
changes = "changes/orders"

[sinks.by_customer]
model = "revenue_by_customer"
path = "output/revenue_by_customer.csv"

[sinks.by_customer_log]
model = "revenue_by_customer"
path = "output/log/revenue_by_customer.csv"
changelog = true

[sinks.top]
model = "top_customers"
path = "output/top_customers.csv"
"#,
    )
    .unwrap();
    std::fs::write(dir.join("data/orders.csv"), "id,customer,amount\n1,alice,10\n2,bob,20\n3,alice,5\n4,carol,7\n")
        .unwrap();
    std::fs::write(
        dir.join("views/revenue_by_customer.sql"),
        "SELECT customer, count(*) AS orders, sum(amount) AS revenue\nFROM orders\nGROUP BY customer\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("views/top_customers.sql"),
        "-- a view over a view\nSELECT customer, revenue FROM revenue_by_customer ORDER BY revenue DESC, customer LIMIT 2\n",
    )
    .unwrap();
    dir
}

const CHANGES: [&str; 3] = [
    // an insert, a delete by key only, an update by upsert
    "id,customer,amount,_op\n5,dave,100,insert\n1,,,delete\n2,bob,1,upsert\n",
    // inserted and deleted in the same file; a full-row delete
    "id,customer,amount,_op\n6,erin,50,insert\n7,frank,3,insert\n7,frank,3,delete\n3,alice,5,delete\n",
    "id,customer,amount,_op\n8,bob,30,insert\n4,carol,70,upsert\n",
];

fn add_changes(dir: &Path, n: usize) {
    for (i, c) in CHANGES.iter().enumerate().take(n) {
        std::fs::write(dir.join(format!("changes/orders/{:04}.csv", i + 1)), c).unwrap();
    }
}

fn apply(dir: &Path, fault: Option<&str>) -> Output {
    let mut c = bin();
    c.args(["views", "apply"]).arg(dir);
    if let Some(f) = fault {
        c.env("SPILLWAY_FAULT", f);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A CSV file's lines after the header, sorted (a view is a multiset).
fn rows(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
    lines.sort();
    lines
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["output", "output/log", ".spillway/views/log"] {
        for e in std::fs::read_dir(dir.join(d)).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.contains("spillway-tmp") {
                out.push(format!("{d}/{n}"));
            }
        }
    }
    out
}

#[test]
fn views_apply_keeps_views_exact_through_inserts_deletes_by_key_and_upserts() {
    let dir = project("exact");
    ok(&apply(&dir, None));
    // populated, no change yet
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), ["alice,2,15", "bob,1,20", "carol,1,7"]);
    add_changes(&dir, 1);
    let out = ok(&apply(&dir, None));
    assert!(out.contains("applied changes/orders/0001.csv (orders, 3 rows)"), "{out}");
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), ["alice,1,5", "bob,1,1", "carol,1,7", "dave,1,100"]);
    // the view over a view, in its ORDER BY
    let top = std::fs::read_to_string(dir.join("output/top_customers.csv")).unwrap();
    assert_eq!(top, "customer,revenue\ndave,100\ncarol,7\n");
    // the changelog: -old +new per changed group
    let log = rows(&dir.join("output/log/revenue_by_customer.00000001.csv"));
    assert_eq!(log, ["alice,1,5,1", "alice,2,15,-1", "bob,1,1,1", "bob,1,20,-1", "dave,1,100,1"]);
    add_changes(&dir, 3);
    let out = ok(&apply(&dir, None));
    assert!(out.contains("2 change file(s) applied"), "{out}");
    assert_eq!(
        rows(&dir.join("output/revenue_by_customer.csv")),
        ["bob,2,31", "carol,1,70", "dave,1,100", "erin,1,50"]
    );
    // nothing pending: nothing applied twice
    let out = ok(&apply(&dir, None));
    assert!(out.contains("0 change file(s) applied") && out.contains("3 logged transaction(s) replayed"), "{out}");
    assert_eq!(
        rows(&dir.join("output/revenue_by_customer.csv")),
        ["bob,2,31", "carol,1,70", "dave,1,100", "erin,1,50"]
    );
    let status = ok(&bin().args(["views", "status"]).arg(&dir).output().unwrap());
    assert!(status.contains("3 transaction(s) applied, the last changes/orders/0003.csv"), "{status}");
    assert!(status.contains("revenue_by_customer  incremental"), "{status}");
    let explain = ok(&bin().args(["views", "explain"]).arg(&dir).arg("top_customers").output().unwrap());
    assert!(explain.contains("TopN offset 0 limit 2") && explain.contains("Scan revenue_by_customer"), "{explain}");
}

#[test]
fn views_apply_killed_at_the_commit_or_while_publishing_loses_and_duplicates_nothing() {
    let expected = {
        let dir = project("kill-reference");
        add_changes(&dir, 3);
        ok(&apply(&dir, None));
        (rows(&dir.join("output/revenue_by_customer.csv")), rows(&dir.join("output/top_customers.csv")))
    };
    for fault in ["views-after-commit", "views-after-commit@2", "publish-after-rename", "publish-after-rename@4"] {
        let dir = project(&format!("kill-{}", fault.replace('@', "-")));
        add_changes(&dir, 3);
        let killed = apply(&dir, Some(fault));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(killed.status.signal(), Some(9), "{fault}: not killed: {}", String::from_utf8_lossy(&killed.stderr));
        ok(&apply(&dir, None));
        let got = (rows(&dir.join("output/revenue_by_customer.csv")), rows(&dir.join("output/top_customers.csv")));
        assert_eq!(got, expected, "{fault}");
        for seq in 1..=3 {
            let f = dir.join(format!("output/log/revenue_by_customer.{seq:08}.csv"));
            assert!(f.is_file(), "{fault}: changelog {} missing", f.display());
        }
        assert!(leftovers(&dir).is_empty(), "{fault}: left behind {:?}", leftovers(&dir));
    }
}

#[test]
fn views_bad_change_files_are_refused_naming_the_file_and_leave_outputs_as_they_were() {
    let dir = project("bad-change");
    add_changes(&dir, 1);
    ok(&apply(&dir, None));
    let before = rows(&dir.join("output/revenue_by_customer.csv"));
    for (name, text, says) in [
        ("0002.csv", "id,customer,amount,_op\n99,x,1,delete\n", "key (99) is deleted but does not exist"),
        ("0002.csv", "id,customer,amount,_op\n5,dave,1,insert\n", "key (5) is inserted but exists (use upsert)"),
        ("0002.csv", "id,customer,amount,_op\n9,x,1,replace\n", "_op is \"replace\""),
        ("0002.csv", "id,customer,amount\n9,x,1\n", "no _op column"),
    ] {
        std::fs::write(dir.join("changes/orders").join(name), text).unwrap();
        let o = apply(&dir, None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{text}: {err}");
        assert!(err.contains("changes/orders/0002.csv") && err.contains(says), "{text}: {err}");
        assert_eq!(err.matches(says).count(), 1, "said twice: {err}");
        assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), before, "{text}");
    }
    // a change file rewritten after it was applied
    std::fs::remove_file(dir.join("changes/orders/0002.csv")).unwrap();
    std::fs::write(dir.join("changes/orders/0001.csv"), format!("{}10,zed,1,insert\n", CHANGES[0])).unwrap();
    let o = apply(&dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("0001.csv") && err.contains("never rewritten"), "{err}");
    // ... also when it keeps its size: its hash is compared
    std::fs::write(dir.join("changes/orders/0001.csv"), CHANGES[0].replace("5,dave,100", "5,dave,101")).unwrap();
    let o = apply(&dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("0001.csv") && err.contains("content is now different"), "{err}");
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), before);
}

#[test]
fn views_that_cannot_be_maintained_are_refused_at_their_file_and_line_unless_recomputed() {
    let dir = project("refused");
    std::fs::write(
        dir.join("views/ranked.sql"),
        "SELECT customer,\n  rank() OVER (ORDER BY amount) AS r\nFROM orders\n",
    )
    .unwrap();
    let o = apply(&dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("views/ranked.sql:2: view ranked: Window cannot be maintained incrementally"), "{err}");
    // asked for explicitly, it is recomputed, and explain says so
    std::fs::write(
        dir.join("views/ranked.sql"),
        "-- spillway: refresh=recompute\nSELECT customer, rank() OVER (ORDER BY amount) AS r\nFROM orders\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("spillway.toml"),
        format!(
            "{}\n[sinks.ranked]\nmodel = \"ranked\"\npath = \"output/ranked.csv\"\n",
            std::fs::read_to_string(dir.join("spillway.toml")).unwrap()
        ),
    )
    .unwrap();
    add_changes(&dir, 1);
    ok(&apply(&dir, None));
    assert_eq!(rows(&dir.join("output/ranked.csv")), ["alice,2", "bob,1", "carol,3", "dave,4"]);
    let explain = ok(&bin().args(["views", "explain"]).arg(&dir).output().unwrap());
    assert!(explain.contains("view ranked (refresh = recompute)"), "{explain}");
}

/// A `views serve` process, killed if a test fails while it runs.
struct Served(Option<std::process::Child>);

impl Served {
    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("running")
    }

    fn take(mut self) -> std::process::Child {
        self.0.take().expect("running")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `views serve DIR` on a free loopback port, with a fast poll.
fn serve(dir: &Path, fault: Option<&str>) -> Served {
    let _ = std::fs::remove_file(dir.join(".spillway/views/serve.json"));
    let mut c = bin();
    c.args(["views", "serve"]).arg(dir).args(["--listen", "127.0.0.1:0", "--poll", "100ms"]);
    if let Some(f) = fault {
        c.env("SPILLWAY_FAULT", f);
    }
    Served(Some(c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()))
}

/// The body of `GET path` from the serve process of `dir` (found through serve.json).
fn get(dir: &Path, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let serving: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".spillway/views/serve.json")).ok()?).ok()?;
    let addr = serving["url"].as_str()?.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// Waits (up to a minute) until `/status` satisfies `ok`; returns it.
fn wait_status(dir: &Path, child: &mut Served, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = get(dir, "/status").and_then(|b| serde_json::from_str(&b).ok()) {
            if ok(&status) {
                return status;
            }
        }
        if let Some(exit) = child.child().try_wait().unwrap() {
            panic!("serve exited ({exit}) while waited on");
        }
        assert!(started.elapsed().as_secs() < 60, "timed out; /status is {:?}", get(dir, "/status"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Writes change file `i` (1-based) as a writer should: under a hidden name, then renamed.
fn drop_change(dir: &Path, i: usize) {
    let staged = dir.join(format!("changes/orders/.{i:04}.csv.tmp"));
    std::fs::write(&staged, CHANGES[i - 1]).unwrap();
    std::fs::rename(&staged, dir.join(format!("changes/orders/{i:04}.csv"))).unwrap();
}

fn terminate(child: Served) -> String {
    let child = child.take();
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    ok(&child.wait_with_output().unwrap())
}

#[test]
fn views_serve_applies_change_files_as_they_arrive_serves_status_and_metrics_and_stops_on_sigterm() {
    let dir = project("serve");
    let mut child = serve(&dir, None);
    let status = wait_status(&dir, &mut child, |s| s["phase"] == "live");
    assert_eq!(status["views_populated"], 2, "{status}");
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), ["alice,2,15", "bob,1,20", "carol,1,7"]);
    drop_change(&dir, 1);
    wait_status(&dir, &mut child, |s| s["transactions"] == 1);
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), ["alice,1,5", "bob,1,1", "carol,1,7", "dave,1,100"]);
    drop_change(&dir, 2);
    drop_change(&dir, 3);
    let status = wait_status(&dir, &mut child, |s| s["transactions"] == 3);
    assert_eq!(
        rows(&dir.join("output/revenue_by_customer.csv")),
        ["bob,2,31", "carol,1,70", "dave,1,100", "erin,1,50"]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("output/top_customers.csv")).unwrap(),
        "customer,revenue\ndave,100\ncarol,70\n"
    );
    assert_eq!((status["applied_now"].as_u64(), status["change_rows"].as_u64()), (Some(3), Some(9)), "{status}");
    assert_eq!(status["pending_files"], 0, "{status}");
    assert!(status["latency"]["count"] == 3 && status["memory"]["budget"] == 256u64 << 20, "{status}");
    let view = status["views"].as_array().unwrap().iter().find(|v| v["name"] == "revenue_by_customer").unwrap();
    assert!(view["transactions"] == 3 && view["rows"] == 4 && view["state_bytes"].as_u64() > Some(0), "{view}");
    let metrics = get(&dir, "/metrics").unwrap();
    for line in [
        "spillway_views_live 1",
        "spillway_views_transactions 3",
        "spillway_view_rows{view=\"revenue_by_customer\"} 4",
        "spillway_view_rows{view=\"top_customers\"} 2",
        "spillway_memory_budget_bytes 268435456",
        "# TYPE spillway_views_change_rows_total counter",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
    let status = ok(&bin().args(["views", "status"]).arg(&dir).output().unwrap());
    assert!(status.contains("served by process") && status.contains("/status"), "{status}");
    let page = get(&dir, "/report").unwrap();
    assert!(page.contains("<svg") && page.contains("revenue_by_customer"), "{page}");
    let out = terminate(child);
    assert!(out.contains("stopped: 3 change file(s) (9 rows) applied by this process"), "{out}");
    let page = std::fs::read_to_string(dir.join(".spillway/views/report.html")).unwrap();
    assert!(page.contains("3 files, 9 rows") && page.contains("top_customers"), "{page}");
    assert!(!dir.join(".spillway/views/serve.json").exists(), "serve.json left behind");
    assert!(leftovers(&dir).is_empty(), "left behind {:?}", leftovers(&dir));
    // started again: the log replayed, nothing applied twice, new files still applied
    let mut child = serve(&dir, None);
    let status = wait_status(&dir, &mut child, |s| s["phase"] == "live");
    assert_eq!((status["replayed"].as_u64(), status["applied_now"].as_u64()), (Some(3), Some(0)), "{status}");
    let out = terminate(child);
    assert!(out.contains("stopped: 0 change file(s)"), "{out}");
    assert_eq!(
        rows(&dir.join("output/revenue_by_customer.csv")),
        ["bob,2,31", "carol,1,70", "dave,1,100", "erin,1,50"]
    );
}

#[test]
fn views_serve_killed_after_a_commit_loses_and_duplicates_nothing_on_restart() {
    let dir = project("serve-kill");
    let mut child = serve(&dir, Some("views-after-commit@2"));
    wait_status(&dir, &mut child, |s| s["phase"] == "live");
    for i in 1..=3 {
        drop_change(&dir, i);
    }
    let killed = child.take().wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(killed.status.signal(), Some(9), "not killed: {}", String::from_utf8_lossy(&killed.stderr));
    let mut child = serve(&dir, None);
    let status = wait_status(&dir, &mut child, |s| s["transactions"] == 3);
    assert_eq!((status["replayed"].as_u64(), status["applied_now"].as_u64()), (Some(2), Some(1)), "{status}");
    terminate(child);
    assert_eq!(
        rows(&dir.join("output/revenue_by_customer.csv")),
        ["bob,2,31", "carol,1,70", "dave,1,100", "erin,1,50"]
    );
    for seq in 1..=3 {
        assert!(dir.join(format!("output/log/revenue_by_customer.{seq:08}.csv")).is_file(), "changelog {seq} missing");
    }
    assert!(leftovers(&dir).is_empty(), "left behind {:?}", leftovers(&dir));
}

/// A project whose `orders` has `rows` rows (`customers` distinct customers) and one view,
/// `view` (its SQL), in a 32MiB budget; `key` is the source's `key` line (or none).
fn large_orders_project(name: &str, rows: u64, customers: u64, key: &str, view: &str, sql: &str) -> PathBuf {
    let dir = project(name);
    let mut csv = String::from("id,customer,amount\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},c{},{}\n", i % customers, i % 97));
    }
    std::fs::write(dir.join("data/orders.csv"), csv).unwrap();
    for v in ["revenue_by_customer", "top_customers"] {
        std::fs::remove_file(dir.join(format!("views/{v}.sql"))).unwrap();
    }
    std::fs::write(dir.join(format!("views/{view}.sql")), sql).unwrap();
    let toml = format!(
        "memory = \"32MiB\"\n\n[sources.orders]\ntype = \"csv\"\npath = \"data/orders.csv\"\n{key}\nchanges = \"changes/orders\"\n\n[sinks.{view}]\nmodel = \"{view}\"\npath = \"output/{view}.csv\"\n"
    );
    std::fs::write(dir.join("spillway.toml"), toml).unwrap();
    dir
}

#[test]
fn views_whose_state_outgrows_the_lease_fail_naming_what_grew_instead_of_growing_past_the_budget() {
    let dir = large_orders_project(
        "state-over-budget",
        300_000,
        50_000,
        r#"key = ["id"]"#,
        "per_customer",
        "SELECT customer, sum(amount) AS total FROM orders GROUP BY customer\n",
    );
    for cmd in ["apply", "serve"] {
        let mut c = bin();
        c.args(["views", cmd]).arg(&dir);
        if cmd == "serve" {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {err}");
        // The source's rows kept by key (what lets a delete name only the key) are charged
        // before any view's state, and are what does not fit here.
        assert_table_refused(&err, "rows by key", cmd);
        assert!(!dir.join("output/per_customer.csv").exists(), "{cmd}: a sink was published");
    }
}

/// `err` says the rows table `orders` keeps (`what`: by key, for recomputed views) do not fit
/// in the views' lease.
fn assert_table_refused(err: &str, what: &str, cmd: &str) {
    assert!(
        err.contains("view table orders: its state (")
            && err.contains(what)
            && err.contains("does not fit in the views' lease"),
        "{cmd}: {err}"
    );
}

/// The rows a recomputed view's table keeps (what the view is recomputed from after each change)
/// are charged to the views' lease like any state: too many for it, and `views apply` fails naming
/// them, publishing nothing.
#[test]
fn views_recomputed_from_a_table_charge_the_rows_they_keep() {
    // About 65MiB of kept rows against a lease of at most 27MiB: refused whatever else holds it.
    let dir = large_orders_project(
        "recompute-over-budget",
        1_000_000,
        50,
        "",
        "ranked",
        "-- spillway: refresh=recompute\nSELECT customer, rank() OVER (ORDER BY sum(amount)) AS r\nFROM orders GROUP BY customer\n",
    );
    let o = apply(&dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_table_refused(&err, "current rows, for recomputed views", "apply");
    assert!(!dir.join("output/ranked.csv").exists(), "a sink was published");
}

/// One writer per views store: beside a running `serve`, a `views apply` and a second `serve`
/// are refused at once, naming the holder, and write nothing; `explain` and `status` only read.
#[test]
fn views_one_writer_at_a_time_a_second_apply_or_serve_is_refused_naming_the_first() {
    let dir = project("one-writer");
    let mut child = serve(&dir, None);
    wait_status(&dir, &mut child, |s| s["phase"] == "live");
    let pid = child.child().id();
    drop_change(&dir, 1);
    let log = || std::fs::read_dir(dir.join(".spillway/views/log")).unwrap().count();
    for args in [vec!["views", "apply"], vec!["views", "serve", "--listen", "127.0.0.1:0"]] {
        let o = bin().args(&args).arg(&dir).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("being written by process {pid} (")) && err.contains("views serve"), "{err}");
    }
    let explain = ok(&bin().args(["views", "explain"]).arg(&dir).output().unwrap());
    assert!(explain.contains("revenue_by_customer"), "{explain}");
    ok(&bin().args(["views", "status"]).arg(&dir).output().unwrap());
    // The change file is the running process's to apply, once.
    wait_status(&dir, &mut child, |s| s["transactions"] == 1);
    assert_eq!(log(), 1);
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), ["alice,1,5", "bob,1,1", "carol,1,7", "dave,1,100"]);
    terminate(child);
    // Its lock went with it.
    add_changes(&dir, 2);
    ok(&apply(&dir, None));
    assert_eq!(log(), 2);
}

/// A delete of a row that is not there, on a source without a key, is refused naming the file
/// and the row (it used to become a negative count that hid the group until an insert), and
/// leaves the views and sinks as they were; so is one that reaches a join's state.
#[test]
fn views_a_delete_of_an_absent_row_is_refused_naming_the_file_and_row() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("views-tests").join("absent-row");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["data", "views", "changes/t"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("spillway.toml"),
        "memory = \"256MiB\"\n\n[sources.t]\ntype = \"csv\"\npath = \"data/t.csv\"\nchanges = \"changes/t\"\n\n\
         [sources.names]\ntype = \"csv\"\npath = \"data/names.csv\"\n\n\
         [sinks.sums]\nmodel = \"sums\"\npath = \"output/sums.csv\"\n\n\
         [sinks.named]\nmodel = \"named\"\npath = \"output/named.csv\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("data/t.csv"), "k,v\na,1\na,2\nb,5\n").unwrap();
    std::fs::write(dir.join("data/names.csv"), "k,name\na,alpha\nb,beta\nz,zeta\n").unwrap();
    std::fs::write(dir.join("views/sums.sql"), "SELECT k, count(*) AS n, sum(v) AS total FROM t GROUP BY k\n").unwrap();
    std::fs::write(dir.join("views/named.sql"), "SELECT t.v, names.name FROM t JOIN names ON t.k = names.k\n").unwrap();
    ok(&apply(&dir, None));
    let sums = rows(&dir.join("output/sums.csv"));
    let named = rows(&dir.join("output/named.csv"));
    assert_eq!(sums, ["a,2,3", "b,1,5"]);
    std::fs::write(dir.join("changes/t/0001.csv"), "k,v,_op\nz,9,delete\n").unwrap();
    let o = apply(&dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("changes/t/0001.csv") && err.contains("deleted a row that was not there"), "{err}");
    // The join beside `names` (which never changes) keeps no rows of `t`: the view's own row
    // is named, as it would go below zero.
    assert!(err.contains("view named would hold (v=9, name=zeta) -1 time(s)"), "the row is named: {err}");
    assert_eq!(rows(&dir.join("output/sums.csv")), sums);
    assert_eq!(rows(&dir.join("output/named.csv")), named);
    assert_eq!(std::fs::read_dir(dir.join(".spillway/views/log")).unwrap().count(), 0, "nothing logged");
    // A good file after it is applied once the bad one is gone.
    std::fs::write(dir.join("changes/t/0001.csv"), "k,v,_op\nz,9,insert\na,1,delete\n").unwrap();
    ok(&apply(&dir, None));
    assert_eq!(rows(&dir.join("output/sums.csv")), ["a,1,2", "b,1,5", "z,1,9"]);
}

/// The views record the source files they were populated from: once changes are logged on top
/// of them, a rewritten source file is refused at start, naming it, and nothing is written.
#[test]
fn views_a_rewritten_snapshot_file_is_refused_at_start() {
    let dir = project("snapshot");
    ok(&apply(&dir, None));
    // No change logged yet: a new snapshot is simply populated from.
    std::fs::write(dir.join("data/orders.csv"), "id,customer,amount\n1,alice,10\n2,bob,20\n3,alice,5\n4,carol,8\n")
        .unwrap();
    ok(&apply(&dir, None));
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), ["alice,2,15", "bob,1,20", "carol,1,8"]);
    add_changes(&dir, 1);
    ok(&apply(&dir, None));
    let before = rows(&dir.join("output/revenue_by_customer.csv"));
    std::fs::write(dir.join("data/orders.csv"), "id,customer,amount\n1,alice,10\n2,bob,20\n3,alice,5\n4,carol,9\n")
        .unwrap();
    add_changes(&dir, 2);
    let o = apply(&dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("data/orders.csv: changed since the views were populated from it"), "{err}");
    assert_eq!(rows(&dir.join("output/revenue_by_customer.csv")), before);
    assert_eq!(std::fs::read_dir(dir.join(".spillway/views/log")).unwrap().count(), 1, "nothing logged");
}

/// `views serve` holds from the machine what its views use, not its whole budget: on a machine
/// (a ledger) exactly the size of serve's budget, the ledger shows serve holding one step, and a
/// `spillway sql` started beside it gets its lease and finishes at once. (A lease of the whole
/// budget for serve's life made every other process on the machine wait for an hour.)
#[test]
fn views_serve_leaves_the_machine_to_the_processes_beside_it() {
    let dir = project("beside");
    let ledger = dir.join("ledger");
    let machine = |c: &mut Command| {
        c.env("SPILLWAY_LEDGER", &ledger).env("SPILLWAY_MACHINE_MEMORY", "256MiB");
    };
    let _ = std::fs::remove_file(dir.join(".spillway/views/serve.json"));
    let mut c = bin();
    machine(&mut c);
    c.args(["views", "serve"]).arg(&dir).args(["--listen", "127.0.0.1:0", "--poll", "100ms"]);
    let mut served =
        Served(Some(c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()));
    wait_status(&dir, &mut served, |s| s["phase"] == "live");
    let pid = served.child().id().to_string();
    let held: u64 = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').next() == Some(pid.as_str()))
        .map(|l| l.split(' ').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(held > 0 && held <= 16 << 20, "serve holds {held} bytes of the machine");

    let mut c = bin();
    machine(&mut c);
    let mut sql = c
        .args(["sql", "--memory", "128MiB", "SELECT 41 + 1 AS answer"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while sql.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() > 60 {
            let _ = sql.kill();
            panic!("spillway sql beside views serve still waits after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = sql.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"));
    // Serve still applies changes (its lease grows as it needs).
    drop_change(&dir, 1);
    wait_status(&dir, &mut served, |s| s["transactions"] == 1);
}

/// A change file is read with its table's column types, not types guessed from its own values:
/// `008` in a text key stays `008` (guessed, it became the integer 8, then the text `8`, and a
/// delete of `007` named a row that is not there).
#[test]
fn views_change_files_keep_the_tables_types() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("views-tests").join("types");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["data", "views", "changes/codes"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("spillway.toml"),
        "memory = \"256MiB\"\n\n[sources.codes]\ntype = \"csv\"\npath = \"data/codes.csv\"\nchanges = \"changes/codes\"\n\n\
         [sinks.all_codes]\nmodel = \"all_codes\"\npath = \"output/all_codes.csv\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("data/codes.csv"), "code,qty\nA01,1\n007,2\n").unwrap();
    std::fs::write(dir.join("views/all_codes.sql"), "SELECT code, qty FROM codes ORDER BY code\n").unwrap();
    ok(&apply(&dir, None));
    std::fs::write(dir.join("changes/codes/0001.csv"), "qty,code,_op\n5,008,insert\n2,007,delete\n").unwrap();
    ok(&apply(&dir, None));
    let out = std::fs::read_to_string(dir.join("output/all_codes.csv")).unwrap();
    assert_eq!(out, "code,qty\n008,5\nA01,1\n", "{out}");
}

/// Kernel peak RSS (VmHWM) of the largest child this test process has waited for.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as u64 * 1024
}

/// A change file of 5,000 rows on a key 1,000 rows of an unchanging table share: 5,000,000 join
/// pairs under an aggregate. It is applied inside a 256MiB budget (kernel peak RSS within 1.15×),
/// exactly, and the join keeps no state for the changing side.
#[test]
fn views_a_join_fanning_out_a_thousand_times_finishes_inside_its_budget() {
    let dir = project("fan-out");
    for v in ["revenue_by_customer", "top_customers"] {
        std::fs::remove_file(dir.join(format!("views/{v}.sql"))).unwrap();
    }
    std::fs::create_dir_all(dir.join("changes/events")).unwrap();
    let mut items = String::from("k,w\n");
    for i in 0..2_000 {
        items.push_str(&format!("{},{}\n", if i < 1_000 { 0 } else { 1 + i % 9 }, i));
    }
    std::fs::write(dir.join("data/items.csv"), items).unwrap();
    std::fs::write(dir.join("data/events.csv"), "k,v\n0,1\n3,2\n").unwrap();
    let mut change = String::from("k,v,_op\n");
    for i in 0..5_000 {
        change.push_str(&format!("0,{i},insert\n"));
    }
    std::fs::write(dir.join("changes/events/0001.csv"), change).unwrap();
    std::fs::write(
        dir.join("views/per_key.sql"),
        "SELECT i.k, count(*) AS n, sum(e.v + i.w) AS total\nFROM events e JOIN items i ON e.k = i.k\nGROUP BY i.k\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("spillway.toml"),
        r#"memory = "256MiB"

[sources.events]
type = "csv"
path = "data/events.csv"
changes = "changes/events"

[sources.items]
type = "csv"
path = "data/items.csv"

[sinks.per_key]
model = "per_key"
path = "output/per_key.csv"
"#,
    )
    .unwrap();
    let explained = ok(&bin().args(["views", "explain"]).arg(&dir).output().unwrap());
    assert!(explained.contains("state left none kept (the right side never changes)"), "{explained}");
    let out = ok(&apply(&dir, None));
    assert!(out.contains("applied changes/events/0001.csv"), "{out}");
    let peak = children_peak_rss();
    assert!(peak <= 256 * 1024 * 1024 * 115 / 100, "peak RSS {}MiB over 256MiB + 15%", peak >> 20);
    // Key 0: 1,000 items × (1 + 5,000) events; sum(v) over events = 1 + (0..5000).sum().
    let ev: i64 = 1 + (0..5_000).sum::<i64>();
    let w0: i64 = (0..1_000).sum();
    let total0 = ev * 1_000 + w0 * 5_001;
    let got = rows(&dir.join("output/per_key.csv"));
    assert!(got.contains(&format!("0,5001000,{total0}")), "{got:?}");
    assert!(got.iter().any(|r| r.starts_with("3,")), "{got:?}");
}

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A change file that rewrites every row of a 200,000-row table (200,000 deletes and 200,000
/// inserts) inside a 32MiB budget: the table's change and the change of a view passing every
/// row are each larger than what the lease has beside the views' state, so they go to the temp
/// space, are consolidated there and published from there. The views stay exact, the changelog
/// holds the whole change, no temp file is left, and a restart replays the logged transaction
/// (a piece at a time) and applies the next one. Killed while the changes sit in the temp space,
/// nothing is committed or published, and the next start sweeps the files and applies the
/// transaction once. (Before, the transaction was held whole in memory and refused: "the lease
/// has no room for ... more of changes in flight".)
#[test]
fn views_a_transaction_larger_than_the_lease_completes_through_the_temp_space() {
    let dir = project("larger-than-lease");
    for v in ["revenue_by_customer", "top_customers"] {
        std::fs::remove_file(dir.join(format!("views/{v}.sql"))).unwrap();
    }
    std::fs::create_dir_all(dir.join("changes/t")).unwrap();
    let n = 200_000;
    let mut data = String::from("k,g,v\n");
    let mut change = String::from("k,g,v,_op\n");
    for k in 0..n {
        data.push_str(&format!("{k},{},{}\n", k % 100, k % 1000));
        change.push_str(&format!("{k},{},{},delete\n", k % 100, k % 1000));
        change.push_str(&format!("{k},{},{},insert\n", k % 100, k % 1000 + 1));
    }
    std::fs::write(dir.join("data/t.csv"), data).unwrap();
    std::fs::write(dir.join("changes/t/0001.csv"), change).unwrap();
    std::fs::write(dir.join("views/moved.sql"), "SELECT k, v FROM t WHERE v >= 0\n").unwrap();
    std::fs::write(dir.join("views/per_g.sql"), "SELECT g, count(*) AS n, sum(v) AS total FROM t GROUP BY g\n")
        .unwrap();
    std::fs::write(
        dir.join("spillway.toml"),
        r#"memory = "32MiB"

[sources.t]
type = "csv"
path = "data/t.csv"
changes = "changes/t"

[sinks.moved]
model = "moved"
path = "output/moved.csv"

[sinks.moved_log]
model = "moved"
path = "output/log/moved.csv"
changelog = true

[sinks.per_g]
model = "per_g"
path = "output/per_g.csv"
"#,
    )
    .unwrap();
    let spill = dir.join("spill");
    let run = |fault: Option<&str>| {
        let mut c = bin();
        c.arg("--spill-dir").arg(&spill).args(["views", "apply"]).arg(&dir);
        if let Some(f) = fault {
            c.env("SPILLWAY_FAULT", f);
        }
        c.output().unwrap()
    };
    let old_total: i64 = (0..n).map(|k| k % 1000).sum();
    let moved_total = |dir: &Path| -> i64 {
        rows(&dir.join("output/moved.csv")).iter().map(|r| r.split(',').nth(1).unwrap().parse::<i64>().unwrap()).sum()
    };
    // Killed (SIGKILL) while the table's change, then a view's, sit spilled in the temp space:
    // the files are there, nothing is committed or published; the next start sweeps them.
    for fault in ["views-change-spilled", "views-view-change-spilled"] {
        let o = run(Some(fault));
        assert_eq!(o.status.code(), None, "{fault}: not killed: {}", String::from_utf8_lossy(&o.stderr));
        assert!(!files_under(&spill).is_empty(), "{fault}: nothing was spilled before the kill");
        assert_eq!(moved_total(&dir), old_total, "{fault}: published before its commit");
        assert!(!dir.join(".spillway/views/log/00000001.arrow").exists(), "{fault}: committed");
    }
    let apply_in = |_: &Path| ok(&run(None));
    let out = apply_in(&dir);
    assert!(out.contains("applied changes/t/0001.csv (t, 400000 rows)"), "{out}");
    assert!(out.contains("spilled to the temp space"), "nothing spilled: {out}");
    assert_eq!(files_under(&spill), Vec::<PathBuf>::new(), "temp files left");
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    assert_eq!(rows(&dir.join("output/moved.csv")).len(), n as usize);
    assert_eq!(moved_total(&dir), old_total + n);
    // The changelog: every old row retracted, every new one inserted, consolidated.
    let log = rows(&dir.join("output/log/moved.00000001.csv"));
    assert_eq!(log.len(), 2 * n as usize);
    assert_eq!(log.iter().filter(|r| r.ends_with(",-1")).count(), n as usize, "{:?}", &log[..3]);
    let per_g = rows(&dir.join("output/per_g.csv"));
    assert_eq!(per_g.len(), 100);
    let g0: i64 = (0..n).filter(|k| k % 100 == 0).map(|k| k % 1000 + 1).sum();
    assert!(per_g.contains(&format!("0,{},{g0}", n / 100)), "{:?}", &per_g[..3]);
    // A restart replays the logged transaction within the same budget, then applies the next.
    std::fs::write(dir.join("changes/t/0002.csv"), "k,g,v,_op\n0,0,1,delete\n").unwrap();
    let out = apply_in(&dir);
    assert!(out.contains("applied changes/t/0002.csv"), "{out}");
    let per_g = rows(&dir.join("output/per_g.csv"));
    assert!(per_g.contains(&format!("0,{},{}", n / 100 - 1, g0 - 1)), "{:?}", &per_g[..3]);
    assert_eq!(rows(&dir.join("output/moved.csv")).len(), n as usize - 1);
    assert_eq!(files_under(&spill), Vec::<PathBuf>::new(), "temp files left");
}

/// A transaction whose growth the machine cannot lend now — another process holds the rest of
/// the machine-wide ledger — waits for it instead of failing, and is applied exactly once that
/// process is gone (before, `views apply` failed the transaction: "the machine could not lend
/// more now").
#[test]
fn views_apply_waits_for_the_machine_instead_of_failing() {
    let dir = project("stall");
    let ledger = dir.join("ledger");
    let mut csv = String::from("id,customer,amount,_op\n");
    for i in 0..300_000 {
        csv += &format!("{},c{i},{},insert\n", 100 + i, i % 97);
    }
    std::fs::write(dir.join("changes/orders/0001.csv"), csv).unwrap();
    // Another process (a `sleep`) holds all of the machine but 24MiB: the views' first lease
    // (16MiB) fits, what the transaction grows into does not until it exits.
    let mut holder = Command::new("sleep").arg("4").spawn().unwrap();
    let capacity = (256u64 << 20) * 85 / 100; // the machine less the default 15% headroom
    let pid = holder.id();
    let start = spillway_governor::ledger::start_ticks(pid).unwrap();
    std::fs::write(&ledger, format!("{pid} {start} 1 {} holder\n", capacity - (24 << 20))).unwrap();
    // Reaped as soon as it exits (a zombie still has its /proc entry, and so its holding).
    let reaper = std::thread::spawn(move || holder.wait());
    let t = std::time::Instant::now();
    let out = bin()
        .env("SPILLWAY_LEDGER", &ledger)
        .env("SPILLWAY_MACHINE_MEMORY", "256MiB")
        .args(["views", "apply"])
        .arg(&dir)
        .output()
        .unwrap();
    let took = t.elapsed();
    reaper.join().unwrap().unwrap();
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("waiting for the machine"), "{stderr}");
    assert!(took >= std::time::Duration::from_secs(2), "went on before the holder exited: {took:?}");
    let got = rows(&dir.join("output/revenue_by_customer.csv"));
    assert_eq!(got.len(), 300_003, "three customers and one per inserted order");
    let last = format!("c299999,1,{}", 299_999 % 97);
    assert!(got.contains(&last) && got.contains(&"alice,2,15".to_string()), "{:?}", &got[..3]);
}
