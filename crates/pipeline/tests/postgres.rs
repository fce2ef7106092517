//! Projects that end in PostgreSQL and start from it, against a real server
//! (`spillway_postgres::testing::TestServer`): sinks in each mode, a source with filters pushed
//! down, errors that name the sink and table, and optional sinks skipped without their URL.

use spillway_governor::{Governor, GovernorConfig};
use spillway_pipeline::run::{run, RunOptions};
use spillway_pipeline::{RunResults, Status};
use spillway_postgres::testing::TestServer;
use spillway_project::Project;
use std::path::Path;
use std::sync::Arc;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

async fn run_in(dir: &Path, budget_mib: u64) -> spillway_pipeline::Result<RunResults> {
    let governor = Governor::new(GovernorConfig::new(budget_mib << 20)).unwrap();
    let project = Project::load(dir)?;
    run(&project, &governor, RunOptions::new(2, dir.join(".spill")), Arc::new(|_| {})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_loads_into_postgres_and_reads_from_it() {
    let server = TestServer::start().unwrap();
    server.create_db("dw").unwrap();
    let url = server.url("dw");
    std::env::set_var("SPILLWAY_TEST_DW_URL", &url);

    // 1. Load: two models into PostgreSQL (one streamed straight in, one also read downstream).
    let load = tempfile::tempdir().unwrap();
    write(
        load.path(),
        &[
            ("models/numbers.sql", "SELECT value AS n, CAST(value % 10 AS INT) AS bucket, 'row ' || CAST(value AS VARCHAR) AS label, date_trunc('month', CAST('2024-05-17 10:11:12.123456789' AS TIMESTAMP)) AS month FROM range(50000)"),
            ("models/buckets.sql", "SELECT bucket, count(*) AS rows, sum(n) AS total FROM numbers GROUP BY bucket"),
            (
                "spillway.toml",
                r#"
[sinks.numbers_pg]
model = "numbers"
type = "postgres"
url_env = "SPILLWAY_TEST_DW_URL"
table = "staging.numbers"
key = ["n"]
indexes = ["bucket", "bucket, label"]
synchronous_commit = "off"

[sinks.buckets_pg]
model = "buckets"
type = "postgres"
url_env = "SPILLWAY_TEST_DW_URL"
table = "buckets"

[sinks.buckets_file]
model = "buckets"
path = "out/buckets.parquet"

[sinks.nowhere]
model = "buckets"
type = "postgres"
url_env = "SPILLWAY_TEST_SURELY_UNSET_URL"
table = "buckets"
optional = true
"#,
            ),
        ],
    );
    server.psql("dw", "CREATE SCHEMA staging").unwrap();
    let r = run_in(load.path(), 64).await.unwrap();
    assert_eq!(r.status, Status::Ok, "{:?}", r.steps.iter().map(|s| &s.error).collect::<Vec<_>>());
    let numbers = r.step("numbers").unwrap();
    assert_eq!(numbers.sinks.len(), 1);
    assert_eq!(numbers.sinks[0].rows, 50_000);
    assert!(numbers.sinks[0].path.to_string_lossy().ends_with("/dw staging.numbers"), "{:?}", numbers.sinks[0].path);
    let buckets = r.step("buckets").unwrap();
    let skipped = buckets.sinks.iter().find(|s| s.name == "nowhere").unwrap();
    assert!(skipped.skipped.as_deref().unwrap().contains("SPILLWAY_TEST_SURELY_UNSET_URL is not set"));
    assert_eq!(server.psql("dw", "SELECT count(*), sum(n) FROM staging.numbers").unwrap(), "50000|1249975000");
    // DataFusion's nanosecond timestamps are loaded as PostgreSQL's microseconds.
    assert_eq!(server.psql("dw", "SELECT DISTINCT month::text FROM staging.numbers").unwrap(), "2024-05-01 00:00:00");
    assert_eq!(server.psql("dw", "SELECT sum(rows), sum(total) FROM buckets").unwrap(), "50000|1249975000");
    assert_eq!(
        server
            .psql(
                "dw",
                "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'numbers'"
            )
            .unwrap(),
        "numbers_bucket_idx,numbers_bucket_label_idx,numbers_pkey"
    );

    // 2. Read: a project whose source is that table, filtered (pushed down) and aggregated.
    let read = tempfile::tempdir().unwrap();
    write(
        read.path(),
        &[
            ("models/odd.sql", "SELECT bucket, count(*) AS c, min(label) AS first FROM numbers WHERE n >= 1000 AND bucket IN (1, 3) GROUP BY bucket ORDER BY bucket"),
            (
                "spillway.toml",
                r#"
[sources.numbers]
type = "postgres"
url_env = "SPILLWAY_TEST_DW_URL"
table = "numbers"
schema = "staging"

[sinks.odd]
model = "odd"
path = "out/odd.csv"
"#,
            ),
        ],
    );
    let r = run_in(read.path(), 64).await.unwrap();
    assert_eq!(r.status, Status::Ok, "{:?}", r.steps.iter().map(|s| &s.error).collect::<Vec<_>>());
    let csv = std::fs::read_to_string(read.path().join("out/odd.csv")).unwrap();
    assert_eq!(csv, "bucket,c,first\n1,4900,row 10001\n3,4900,row 10003\n");

    // 3. A bad load fails the model with the sink and table named, and keeps the old table.
    write(
        load.path(),
        &[("models/numbers.sql", "SELECT CAST(value AS INT) AS n, 1 AS bucket, 'x' AS label FROM range(10)")],
    );
    let r = run_in(load.path(), 64).await.unwrap();
    let err = r.step("numbers").unwrap().error.clone().unwrap();
    assert!(
        err.contains("sink numbers_pg → staging.numbers")
            && err.contains("n: the model gives Int32 (written as integer), the table has bigint"),
        "{err}"
    );
    assert_eq!(server.psql("dw", "SELECT count(*) FROM staging.numbers").unwrap(), "50000");
    assert_eq!(server.psql("dw", "SELECT count(*) FROM pg_class WHERE relname LIKE '%spillway%'").unwrap(), "0");

    // 4. Configuration and connection problems are reported before any work, at their line.
    write(read.path(), &[("spillway.toml", "[sources.numbers]\ntype = \"postgres\"\nurl = \"postgresql://spillway:x@127.0.0.1:1/dw\"\ntable = \"numbers\"\n")]);
    let err = run_in(read.path(), 64).await.unwrap_err().to_string();
    assert!(err.contains("spillway.toml:1: [sources.numbers]: source numbers (public.numbers): cannot reach PostgreSQL at spillway@127.0.0.1:1/dw"), "{err}");
    write(
        load.path(),
        &[(
            "spillway.toml",
            "[sinks.x]\nmodel = \"numbers\"\ntype = \"postgres\"\ntable = \"t\"\nmode = \"merge\"\nurl_env = \"A\"\n",
        )],
    );
    let err = Project::load(load.path()).unwrap_err().to_string();
    assert!(err.contains("spillway.toml:1: [sinks.x]: mode = \"merge\": use replace, append or upsert"), "{err}");
}
