//! End-to-end tests of views kept from PostgreSQL to PostgreSQL: sources followed through
//! logical replication (`cdc = true`), views published into PostgreSQL tables, against a real
//! server started by the test. After random transactions on three tables (one with REPLICA
//! IDENTITY FULL and no key), each view table must equal PostgreSQL running the view's SQL, also
//! after `serve` is killed while streaming, inside a sink's transaction, and before the slot is
//! told a position is durable.

use spillway_postgres::testing::{TestServer, PASSWORD};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env_remove("SPILLWAY_MEMORY").env_remove("SPILLWAY_FAULT").env("SPILLWAY_LOG", "warn").env("SHOP_URL", url);
    c
}

const VIEWS: [(&str, &str); 3] = [
    (
        "revenue_by_region",
        "SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue FROM orders o JOIN customers c ON o.customer = c.id GROUP BY c.region",
    ),
    ("open_orders", "SELECT o.id, o.customer, o.amount, o.status FROM orders o WHERE o.status = 'O'"),
    ("event_counts", "SELECT kind, count(*) AS events, sum(n) AS total FROM events GROUP BY kind"),
];

fn project(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("views-pg-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("views")).unwrap();
    let mut toml = String::from("memory = \"256MiB\"\n");
    for t in ["customers", "orders", "events"] {
        toml.push_str(&format!(
            "\n[sources.{t}]\ntype = \"postgres\"\nurl_env = \"SHOP_URL\"\ntable = \"{t}\"\ncdc = true\n"
        ));
    }
    toml.push_str(
        r#"
[sinks.revenue_by_region]
model = "revenue_by_region"
type = "postgres"
url_env = "SHOP_URL"
table = "view_revenue_by_region"
mode = "upsert"
key = ["region"]

[sinks.open_orders]
model = "open_orders"
type = "postgres"
url_env = "SHOP_URL"
table = "view_open_orders"
mode = "upsert"
key = ["id"]

[sinks.event_counts]
model = "event_counts"
type = "postgres"
url_env = "SHOP_URL"
table = "view_event_counts"
"#,
    );
    std::fs::write(dir.join("spillway.toml"), toml).unwrap();
    for (v, sql) in VIEWS {
        std::fs::write(dir.join(format!("views/{v}.sql")), format!("{sql}\n")).unwrap();
    }
    dir
}

fn schema(server: &TestServer) {
    server.create_db("shop").unwrap();
    server
        .psql(
            "shop",
            "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, region text);
             CREATE TABLE orders (id bigint PRIMARY KEY, customer int, amount numeric(12,2), status char(1), placed date);
             CREATE TABLE events (kind text, n int);
             ALTER TABLE events REPLICA IDENTITY FULL;
             INSERT INTO customers SELECT i, 'c' || i, (ARRAY['north','south','east',NULL])[1 + i % 4] FROM generate_series(1, 20) i;
             INSERT INTO orders SELECT i, 1 + i % 25, (i * 7 % 1000) / 10.0, (ARRAY['O','F','P'])[1 + i % 3], DATE '2024-01-01' + i FROM generate_series(1, 200) i;
             INSERT INTO events SELECT (ARRAY['a','b','c'])[1 + i % 3], i % 5 FROM generate_series(1, 30) i;",
        )
        .unwrap();
}

/// A small deterministic random source (tests must repeat).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `n` random transactions of 1 to 6 statements over the three tables (inserts, updates of
/// keys and values, deletes, and now and then a TRUNCATE of `events`).
fn workload(rng: &mut Rng, n: usize, next_id: &mut u64) -> String {
    let mut sql = String::new();
    for _ in 0..n {
        sql.push_str("BEGIN;\n");
        for _ in 0..1 + rng.next(6) {
            let stmt = match rng.next(12) {
                0..=2 => {
                    *next_id += 1;
                    format!(
                        "INSERT INTO orders VALUES ({}, {}, {}.{:02}, '{}', DATE '2024-06-01');",
                        *next_id,
                        1 + rng.next(25),
                        rng.next(500),
                        rng.next(100),
                        ["O", "F", "P"][rng.next(3) as usize]
                    )
                }
                3 => format!("UPDATE orders SET amount = amount + 1.25 WHERE id % 17 = {};", rng.next(17)),
                4 => format!("UPDATE orders SET status = 'F' WHERE id % 23 = {} AND status = 'O';", rng.next(23)),
                5 => format!("DELETE FROM orders WHERE id % 31 = {};", rng.next(31)),
                6 => format!("UPDATE orders SET id = id + 100000 WHERE id = {};", 1 + rng.next(200)),
                7 => format!(
                    "UPDATE customers SET region = {} WHERE id = {};",
                    ["'north'", "'west'", "NULL"][rng.next(3) as usize],
                    1 + rng.next(22)
                ),
                8 => {
                    let id = 21 + rng.next(5);
                    format!("INSERT INTO customers VALUES ({id}, 'new', 'west') ON CONFLICT (id) DO UPDATE SET region = 'east';")
                }
                9 => {
                    format!("INSERT INTO events VALUES ('{}', {});", ["a", "b", "d"][rng.next(3) as usize], rng.next(9))
                }
                10 => format!(
                    "DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE kind = '{}' LIMIT 1);",
                    ["a", "b", "c"][rng.next(3) as usize]
                ),
                _ if rng.next(4) == 0 => "TRUNCATE events;".to_string(),
                _ => format!("UPDATE events SET n = n + 1 WHERE kind = '{}';", ["a", "b", "d"][rng.next(3) as usize]),
            };
            sql.push_str(&stmt);
            sql.push('\n');
        }
        sql.push_str("COMMIT;\n");
    }
    sql
}

/// Rows in which view table `v` and PostgreSQL's own run of the view's SQL differ.
fn differences(server: &TestServer, v: &str, sql: &str) -> Result<u64, String> {
    let q = format!(
        "SELECT count(*) FROM ((SELECT * FROM view_{v} EXCEPT ALL SELECT * FROM ({sql}) a) \
         UNION ALL (SELECT * FROM ({sql}) b EXCEPT ALL SELECT * FROM view_{v})) d"
    );
    server.psql("shop", &q).and_then(|t| t.parse().map_err(|e| format!("{e}: {t}")))
}

/// Waits (up to 90 s) until every view table equals PostgreSQL's answer; `views` limits which.
fn wait_equal(server: &TestServer, child: &mut std::process::Child, views: &[&str]) {
    let started = Instant::now();
    loop {
        let diff: Vec<(String, Result<u64, String>)> = VIEWS
            .iter()
            .filter(|(v, _)| views.contains(v))
            .map(|(v, sql)| (v.to_string(), differences(server, v, sql)))
            .collect();
        if diff.iter().all(|(_, d)| d.as_ref().is_ok_and(|n| *n == 0)) {
            return;
        }
        if let Some(exit) = child.try_wait().unwrap() {
            let out = child.stderr.take().map(|mut e| {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                s
            });
            panic!("serve exited ({exit}) while views differed: {diff:?}\n{}", out.unwrap_or_default());
        }
        assert!(started.elapsed() < Duration::from_secs(90), "views still differ: {diff:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, url: &str, fault: Option<&str>) -> Served {
    serve_polling(dir, url, fault, "100ms")
}

/// `views serve` looking for change files every `poll`.
fn serve_polling(dir: &Path, url: &str, fault: Option<&str>, poll: &str) -> Served {
    let _ = std::fs::remove_file(dir.join(".spillway/views/serve.json"));
    let mut c = bin(url);
    c.args(["views", "serve"]).arg(dir).args(["--listen", "127.0.0.1:0", "--poll", poll]);
    if let Some(f) = fault {
        c.env("SPILLWAY_FAULT", f);
    }
    Served(c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
}

/// Waits until the process of `s` exits (killed by its fault point); returns its stderr.
fn wait_killed(mut s: Served) -> String {
    let started = Instant::now();
    loop {
        if let Some(status) = s.0.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "killed at its fault point: {status}");
            let mut err = String::new();
            if let Some(mut e) = s.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return err;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the fault point was never reached");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_views_equal_postgres_after_random_transactions_and_kills() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let url = server.url("shop");
    let dir = project("cdc");
    let plan = bin(&url).arg("plan").arg(&dir).output().unwrap();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));

    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    let mut rng = Rng(42);
    let mut next_id = 1000;
    let mut served = serve(&dir, &url, None);
    wait_equal(&server, &mut served.0, &all); // the snapshot, published
    server.psql("shop", &workload(&mut rng, 60, &mut next_id)).unwrap();
    wait_equal(&server, &mut served.0, &all);
    let log_entries = || std::fs::read_dir(dir.join(".spillway/views/log")).unwrap().count();
    let before = log_entries();
    // One large transaction: more rows than a part holds.
    server
        .psql("shop", "INSERT INTO orders SELECT 500000 + i, 1 + i % 25, i % 100, 'O', DATE '2024-07-01' FROM generate_series(1, 20000) i")
        .unwrap();
    wait_equal(&server, &mut served.0, &all);
    let open: u64 = server.psql("shop", "SELECT count(*) FROM view_open_orders").unwrap().parse().unwrap();
    assert!(open > 20_000, "the 20,000-row transaction reached the view table: {open}");
    // It was applied in parts of at most 8,192 rows, each logged.
    assert_eq!(log_entries() - before, 3, "20,000 rows in 3 parts");
    drop(served);

    // Killed: after a transaction is logged (while streaming), inside a sink's transaction,
    // and after the sinks committed but before the slot heard of it. Each time the restarted
    // process ends with the view tables equal to PostgreSQL's answer.
    // Also between two parts of a source transaction (the first logged, its commit not yet).
    for fault in
        ["views-after-commit@7", "view-sink-before-commit@5", "views-cdc-before-ack@4", "views-cdc-after-part@3"]
    {
        let killed = serve(&dir, &url, Some(fault));
        server.psql("shop", &workload(&mut rng, 40, &mut next_id)).unwrap();
        let err = wait_killed(killed);
        assert!(!err.contains(PASSWORD), "no password in what serve writes: {err}");
        let mut served = serve(&dir, &url, None);
        wait_equal(&server, &mut served.0, &all);
        server.psql("shop", &workload(&mut rng, 20, &mut next_id)).unwrap();
        wait_equal(&server, &mut served.0, &all);
    }

    // A column added to `events` stops the view reading it, not the others.
    let mut served = serve(&dir, &url, None);
    wait_equal(&server, &mut served.0, &all);
    server.psql("shop", "ALTER TABLE events ADD COLUMN note text; INSERT INTO events VALUES ('z', 1, 'x')").unwrap();
    server
        .psql(
            "shop",
            &workload(&mut rng, 20, &mut next_id)
                .replace("INSERT INTO events VALUES", "INSERT INTO events (kind, n) VALUES"),
        )
        .unwrap();
    wait_equal(&server, &mut served.0, &["revenue_by_region", "open_orders"]);
    let status = bin(&url).args(["views", "status"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    let started = Instant::now();
    let mut text = text;
    while !text.contains("STOPPED") && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        text = String::from_utf8_lossy(&bin(&url).args(["views", "status"]).arg(&dir).output().unwrap().stdout)
            .into_owned();
    }
    assert!(
        text.contains("event_counts") && text.contains("STOPPED") && text.contains("column note was added"),
        "{text}"
    );
    assert!(text.contains("following PostgreSQL through slot spillway_cdc"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    for f in ["status.json", "serve.json"] {
        let body = std::fs::read_to_string(dir.join(".spillway/views").join(f)).unwrap_or_default();
        assert!(!body.contains(PASSWORD), "{f}: {body}");
    }
    drop(served);

    // A slot no source follows is reported (PostgreSQL keeps WAL for it).
    server.psql("shop", "SELECT pg_create_logical_replication_slot('spillway_gone', 'pgoutput')").unwrap();
    let text =
        String::from_utf8_lossy(&bin(&url).args(["views", "status"]).arg(&dir).output().unwrap().stdout).into_owned();
    assert!(text.contains("slot spillway_gone") && text.contains("no source follows it"), "{text}");
}

/// A view edited so that no view reads a followed table any more (`events`, still in the
/// slot): its changes are skipped and acknowledged, the other views go on. (It used to index a
/// map without the table and panic on every restart, while the slot kept WAL.)
#[test]
fn a_followed_table_no_view_reads_any_more_is_skipped_and_acknowledged() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let url = server.url("shop");
    let dir = project("unread");
    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    let mut served = serve(&dir, &url, None);
    wait_equal(&server, &mut served.0, &all);
    drop(served);

    // `event_counts` goes, with its sink: `events` is still in slot.json, and still sent.
    let toml = std::fs::read_to_string(dir.join("spillway.toml")).unwrap();
    let toml = toml.split("[sinks.event_counts]").next().unwrap().to_string();
    std::fs::write(dir.join("spillway.toml"), toml).unwrap();
    std::fs::remove_file(dir.join("views/event_counts.sql")).unwrap();
    let kept = ["revenue_by_region", "open_orders"];
    let (mut rng, mut next_id) = (Rng(7), 1000);
    let mut served = serve(&dir, &url, None);
    server.psql("shop", &workload(&mut rng, 30, &mut next_id)).unwrap();
    wait_equal(&server, &mut served.0, &kept);
    // A transaction of `events` alone is acknowledged: the slot does not hold its WAL. (Every
    // transaction before it ended before `before`; its own commit ends after it.)
    let before = server.psql("shop", "SELECT pg_current_wal_insert_lsn()").unwrap();
    server.psql("shop", "INSERT INTO events VALUES ('q', 1)").unwrap();
    let started = Instant::now();
    loop {
        let confirmed = server
            .psql(
                "shop",
                &format!(
                    "SELECT confirmed_flush_lsn > '{before}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'spillway_unread'"
                ),
            )
            .unwrap();
        if confirmed == "t" {
            break;
        }
        assert!(served.0.try_wait().unwrap().is_none(), "serve exited");
        if started.elapsed() > Duration::from_secs(60) {
            let slot = server
                .psql("shop", "SELECT confirmed_flush_lsn, pg_current_wal_lsn() FROM pg_replication_slots")
                .unwrap();
            let _ = served.0.kill();
            let mut err = String::new();
            if let Some(mut e) = served.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the slot never heard of the commit after {before}: {slot}\n{err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.psql("shop", &workload(&mut rng, 10, &mut next_id)).unwrap();
    wait_equal(&server, &mut served.0, &kept);
}

/// A column retyped with the same type oid and another modifier (`numeric(12,2)` →
/// `numeric(14,4)`) stops the views that read its table (they would decode values at the old
/// scale), and only those. The process polls every millisecond: the stream's start, slower
/// than that, is not dropped and begun again (it used to be, forever).
#[test]
fn a_column_retyped_with_another_modifier_stops_its_views() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let url = server.url("shop");
    let dir = project("retyped");
    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    let mut served = serve_polling(&dir, &url, None, "1ms");
    wait_equal(&server, &mut served.0, &all);
    server
        .psql(
            "shop",
            "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(14,4); UPDATE orders SET amount = amount + 0.0001 WHERE id = 1",
        )
        .unwrap();
    server.psql("shop", "INSERT INTO events VALUES ('r', 3)").unwrap();
    wait_equal(&server, &mut served.0, &["event_counts"]);
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        text = String::from_utf8_lossy(&bin(&url).args(["views", "status"]).arg(&dir).output().unwrap().stdout)
            .into_owned();
        if text.matches("STOPPED").count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(text.matches("STOPPED").count(), 2, "{text}");
    assert!(text.contains("column amount changed its type modifier"), "{text}");
    let line = text.lines().find(|l| l.starts_with("event_counts")).unwrap();
    assert!(!line.contains("STOPPED"), "{text}");
}

/// A project with a followed table and a change-file source: a change file that arrives while a
/// large PostgreSQL transaction is being applied (in parts) waits for its commit. Killed at the
/// first commit after it arrives, the restarted process counts neither twice: before, the file
/// was applied and logged between the transaction's parts, the parts before it were replayed at
/// restart and PostgreSQL sent the whole transaction again.
#[test]
fn a_change_file_never_lands_between_the_parts_of_a_postgres_transaction() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let url = server.url("shop");
    let dir = project("mixed");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("changes/notes")).unwrap();
    std::fs::write(dir.join("data/notes.csv"), "id,v\n1,10\n").unwrap();
    let mut toml = std::fs::read_to_string(dir.join("spillway.toml")).unwrap();
    toml.push_str(
        "\n[sources.notes]\ntype = \"csv\"\npath = \"data/notes.csv\"\nchanges = \"changes/notes\"\n\n\
         [sinks.note_total]\nmodel = \"note_total\"\npath = \"output/note_total.csv\"\n",
    );
    std::fs::write(dir.join("spillway.toml"), toml).unwrap();
    std::fs::write(dir.join("views/note_total.sql"), "SELECT count(*) AS n, sum(v) AS total FROM notes\n").unwrap();
    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    let mut served = serve(&dir, &url, None);
    wait_equal(&server, &mut served.0, &all);
    drop(served);

    let killed = serve(&dir, &url, Some("views-after-commit@1"));
    // Wait until it streams (the slot is active), then a transaction of 49 parts, and the
    // change file while those are applied.
    let started = Instant::now();
    while server.psql("shop", "SELECT bool_or(active) FROM pg_replication_slots").unwrap() != "t" {
        assert!(started.elapsed() < Duration::from_secs(60), "never streamed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = dir.join(".spillway/views/log");
    let logged = || std::fs::read_dir(&log).unwrap().count();
    let before = logged();
    server
        .psql("shop", "INSERT INTO orders SELECT 700000 + i, 1 + i % 25, i % 100, 'O', DATE '2024-08-01' FROM generate_series(1, 400000) i")
        .unwrap();
    // Its first part is logged: the transaction is being applied, 48 parts to go.
    while logged() == before {
        assert!(started.elapsed() < Duration::from_secs(60), "the transaction never arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
    let staged = dir.join("changes/notes/.0001.csv.tmp");
    std::fs::write(&staged, "id,v,_op\n2,5,insert\n").unwrap();
    std::fs::rename(&staged, dir.join("changes/notes/0001.csv")).unwrap();
    wait_killed(killed);
    let mut served = serve(&dir, &url, None);
    wait_equal(&server, &mut served.0, &all);
    let started = Instant::now();
    loop {
        let total = std::fs::read_to_string(dir.join("output/note_total.csv")).unwrap_or_default();
        if total.lines().nth(1) == Some("2,15") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the change file counted once: {total}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PostgreSQL transaction larger than what the views' lease holds beside their state (an
/// UPDATE of 300,000 orders: 600,000 change rows in parts) inside a 64MiB budget: each view's
/// change over the parts goes to the temp space, is consolidated there at the commit, and every
/// view equals PostgreSQL's answer. (Before, the parts' changes were held in memory, uncounted.)
#[test]
fn a_postgres_transaction_larger_than_the_lease_goes_through_the_temp_space() {
    let server = TestServer::start().unwrap();
    schema(&server);
    server
        .psql("shop", "INSERT INTO orders SELECT 1000 + i, 1 + i % 25, i % 100, 'O', DATE '2024-08-01' FROM generate_series(1, 300000) i")
        .unwrap();
    let url = server.url("shop");
    let dir = project("larger-than-lease");
    let toml = std::fs::read_to_string(dir.join("spillway.toml")).unwrap();
    std::fs::write(dir.join("spillway.toml"), toml.replace("memory = \"256MiB\"", "memory = \"64MiB\"")).unwrap();
    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    views_ok(&url, &["apply"], &dir);
    assert_equal(&server, &all);
    server.psql("shop", "UPDATE orders SET amount = amount + 1 WHERE id > 1000").unwrap();
    let out = views_ok(&url, &["apply"], &dir);
    let line = out.lines().find(|l| l.starts_with("applied PostgreSQL transaction")).unwrap_or_default();
    assert!(line.contains("(300000 rows") && line.contains("spilled to the temp space"), "{out}");
    assert_equal(&server, &all);
}

#[test]
fn a_followed_table_without_key_or_replica_identity_is_refused_at_plan() {
    let server = TestServer::start().unwrap();
    server.create_db("shop").unwrap();
    server.psql("shop", "CREATE TABLE customers (id int); CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE events (kind text)").unwrap();
    let dir = project("nokey");
    let out = bin(&server.url("shop")).arg("plan").arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("table public.customers has no primary key and no replica identity")
            && err.contains("REPLICA IDENTITY FULL"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

/// Each view table equals PostgreSQL's own answer now.
fn assert_equal(server: &TestServer, views: &[&str]) {
    for (v, sql) in VIEWS.iter().filter(|(v, _)| views.contains(v)) {
        assert_eq!(differences(server, v, sql), Ok(0), "view {v} differs from PostgreSQL's answer");
    }
}

/// `spillway views ARGS DIR`, which must succeed; its stdout.
fn views_ok(url: &str, args: &[&str], dir: &Path) -> String {
    let out = bin(url).arg("views").args(args).arg(dir).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "views {args:?}: {stdout}\n{stderr}");
    stdout.into_owned()
}

/// `views explain` (a reader) makes no slot and no publication; a one-shot `views apply`
/// makes the slot, and every later one applies what PostgreSQL committed before it started
/// and tells the slot, so that no slot is left holding WAL that nobody reads.
#[test]
fn views_apply_catches_up_with_postgres_and_explain_makes_no_slot() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let url = server.url("shop");
    let dir = project("oneshot");
    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    let out = bin(&url).args(["views", "explain"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no `views serve` or `views apply` has made their slot"), "{err}");
    let made = "SELECT (SELECT count(*) FROM pg_replication_slots) || ',' || (SELECT count(*) FROM pg_publication)";
    assert_eq!(server.psql("shop", made).unwrap(), "0,0", "explain made a slot or a publication");
    assert!(!dir.join(".spillway").exists(), "explain wrote into the project");

    let first = views_ok(&url, &["apply"], &dir);
    assert!(first.contains("0 PostgreSQL transaction(s) applied"), "{first}");
    assert_equal(&server, &all);
    let (mut rng, mut next_id) = (Rng(11), 1000);
    for round in 0..3 {
        server.psql("shop", &workload(&mut rng, 25, &mut next_id)).unwrap();
        let before = server.psql("shop", "SELECT pg_current_wal_insert_lsn()").unwrap();
        let out = views_ok(&url, &["apply"], &dir);
        let applied = out.lines().filter(|l| l.starts_with("applied PostgreSQL transaction")).count();
        assert!(applied > 0 && applied <= 25, "round {round}: {out}");
        assert_equal(&server, &all);
        let told = server
            .psql(
                "shop",
                &format!("SELECT confirmed_flush_lsn >= '{before}'::pg_lsn AND NOT active FROM pg_replication_slots"),
            )
            .unwrap();
        assert_eq!(told, "t", "round {round}: the slot was told what the apply read, and is free again");
    }
    // Nothing new: nothing applied, at once.
    let started = Instant::now();
    let out = views_ok(&url, &["apply"], &dir);
    assert!(out.contains("0 change file(s), 0 PostgreSQL transaction(s) applied"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let explained = views_ok(&url, &["explain"], &dir);
    assert!(explained.contains("open_orders"), "{explained}");
}

/// A start that fails after the slot was made (here: the role may replicate but not read a
/// table) leaves no slot behind in PostgreSQL, and no snapshot or `creating` marker in the
/// project; once the role may read it, the next start makes the slot.
#[test]
fn a_start_that_fails_after_making_the_slot_drops_it() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let dir = project("noread");
    server
        .psql(
            "shop",
            "CREATE ROLE rep LOGIN REPLICATION PASSWORD 'rep-pw';
             CREATE PUBLICATION spillway_noread FOR TABLE customers, orders, events;
             GRANT SELECT ON customers, events TO rep; GRANT CREATE ON SCHEMA public TO rep;",
        )
        .unwrap();
    let url = format!("postgresql://rep:rep-pw@127.0.0.1:{}/shop", server.port());
    let out = bin(&url).args(["views", "apply"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("permission denied"), "{err}");
    assert_eq!(server.psql("shop", "SELECT count(*) FROM pg_replication_slots").unwrap(), "0", "slot left behind");
    let slot_dir = dir.join(".spillway/views/cdc/spillway_noread");
    assert!(!slot_dir.join("creating").exists() && !slot_dir.join("snapshot").exists(), "files left behind");

    server.psql("shop", "GRANT SELECT ON orders TO rep").unwrap();
    views_ok(&url, &["apply"], &dir);
    assert_eq!(server.psql("shop", "SELECT slot_name FROM pg_replication_slots").unwrap(), "spillway_noread");
    assert_equal(&server, &VIEWS.map(|(v, _)| v));
}

/// While another process holds the slot, `serve` (polling every millisecond) keeps trying to
/// start the stream, its `/status` saying `connecting`, not `live`; once the slot is free it
/// streams, and changes made meanwhile reach the views.
#[test]
fn serve_says_connecting_until_it_streams() {
    let server = TestServer::start().unwrap();
    schema(&server);
    let url = server.url("shop");
    let dir = project("connecting");
    let all: Vec<&str> = VIEWS.iter().map(|(v, _)| *v).collect();
    views_ok(&url, &["apply"], &dir);
    let mut holder = server
        .tool("pg_recvlogical")
        .args(["-d", &url, "--slot", "spillway_connecting", "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=spillway_connecting"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.psql("shop", "SELECT bool_or(active) FROM pg_replication_slots").unwrap() != "t" {
        assert!(started.elapsed() < Duration::from_secs(30), "pg_recvlogical never took the slot");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut served = serve_polling(&dir, &url, None, "1ms");
    let phase = |dir: &Path| -> Option<String> {
        use std::io::{Read, Write};
        let serving: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(".spillway/views/serve.json")).ok()?).ok()?;
        let addr = serving["url"].as_str()?.trim_start_matches("http://").to_string();
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        write!(s, "GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body: serde_json::Value = serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()?;
        body["phase"].as_str().map(str::to_string)
    };
    let started = Instant::now();
    while phase(&dir).as_deref() != Some("connecting") {
        assert!(served.0.try_wait().unwrap().is_none(), "serve exited");
        assert!(started.elapsed() < Duration::from_secs(60), "never connecting: {:?}", phase(&dir));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Held for three seconds more: still connecting, not live.
    let (mut rng, mut next_id) = (Rng(5), 1000);
    server.psql("shop", &workload(&mut rng, 10, &mut next_id)).unwrap();
    for _ in 0..30 {
        assert_eq!(phase(&dir).as_deref(), Some("connecting"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let started = Instant::now();
    while phase(&dir).as_deref() != Some("live") {
        assert!(started.elapsed() < Duration::from_secs(60), "never live: {:?}", phase(&dir));
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_equal(&server, &mut served.0, &all);
}

/// Two projects whose PostgreSQL sinks have the same name (`totals`) and write different
/// tables keep separate progress: the second, killed after logging its first change file and
/// before publishing it, republishes it at its next start although the first has published its
/// own transaction 1. (Keyed by the sink's name, the first's progress made the second skip it.)
#[test]
fn two_projects_with_the_same_sink_name_keep_separate_progress() {
    let server = TestServer::start().unwrap();
    server.create_db("shop").unwrap();
    let url = server.url("shop");
    let make = |name: &str| -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("views-pg-tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["views", "data", "changes/notes"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("data/notes.csv"), "id,v\n1,10\n").unwrap();
        std::fs::write(
            dir.join("spillway.toml"),
            format!(
                "memory = \"256MiB\"\n\n[sources.notes]\ntype = \"csv\"\npath = \"data/notes.csv\"\nchanges = \"changes/notes\"\n\n\
                 [sinks.totals]\nmodel = \"totals\"\ntype = \"postgres\"\nurl_env = \"SHOP_URL\"\ntable = \"{name}_totals\"\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("views/totals.sql"), "SELECT count(*) AS n, sum(v) AS total FROM notes\n").unwrap();
        dir
    };
    let drop_change = |dir: &Path, i: u32, v: u32| {
        std::fs::write(dir.join(format!("changes/notes/{i:04}.csv")), format!("id,v,_op\n{},{v},insert\n", 100 + i))
            .unwrap();
    };
    let (alpha, beta) = (make("alpha"), make("beta"));
    views_ok(&url, &["apply"], &alpha);
    views_ok(&url, &["apply"], &beta);
    drop_change(&beta, 1, 5);
    let killed =
        bin(&url).args(["views", "apply"]).arg(&beta).env("SPILLWAY_FAULT", "views-after-commit").output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(killed.status.signal(), Some(9), "killed at its fault point");
    assert_eq!(server.psql("shop", "SELECT n || ',' || total FROM beta_totals").unwrap(), "1,10", "not yet published");
    // Meanwhile the first publishes its own transaction 1.
    drop_change(&alpha, 1, 1);
    views_ok(&url, &["apply"], &alpha);
    assert_eq!(server.psql("shop", "SELECT n || ',' || total FROM alpha_totals").unwrap(), "2,11");
    let out = views_ok(&url, &["apply"], &beta);
    assert!(out.contains("0 change file(s) applied"), "the file was logged before the kill: {out}");
    assert_eq!(server.psql("shop", "SELECT n || ',' || total FROM beta_totals").unwrap(), "2,15", "republished");
    assert_eq!(server.psql("shop", "SELECT n || ',' || total FROM alpha_totals").unwrap(), "2,11");
}
