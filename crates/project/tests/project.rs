//! Loading projects and building their DAG: settings precedence, dependency inference, selection,
//! and errors that name the file and line.

#![allow(clippy::result_large_err)]

use spillway_project::dag::Dag;
use spillway_project::*;

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

const TOML: &str = r#"
[defaults]
profile = "S"

[sources.tpch]
type = "tpch"
sf = 0.01

[sinks.out]
model = "revenue"
path = "out/revenue.parquet"

[models.order_lines]
class = "heavy"
"#;

fn example() -> tempfile::TempDir {
    project(&[
        ("spillway.toml", TOML),
        ("models/order_lines.sql", "SELECT o_orderkey, l_extendedprice FROM orders JOIN lineitem ON l_orderkey = o_orderkey"),
        ("models/revenue.sql", "-- spillway: profile=L materialize=parquet\nWITH x AS (SELECT * FROM order_lines)\nSELECT sum(l_extendedprice) FROM x"),
        ("models/top.sql", "SELECT * FROM revenue r, order_lines o LIMIT 1"),
        ("models/nations.sql", "SELECT n_name FROM nation"),
    ])
}

#[test]
fn infers_dependencies_order_and_settings() {
    let dir = example();
    let p = Project::load(dir.path()).unwrap();
    let dag = Dag::build(&p).unwrap();
    assert_eq!(dag.upstream["revenue"], vec!["order_lines"], "CTE names are not tables");
    assert_eq!(dag.upstream["top"], vec!["order_lines", "revenue"]);
    assert_eq!(dag.sources["order_lines"], vec!["lineitem", "orders"]);
    assert_eq!(dag.order, vec!["nations", "order_lines", "revenue", "top"]);
    let s = &p.models["order_lines"].settings;
    assert_eq!((s.class, s.lease), (Class::Heavy, LeaseSpec::Profile(spillway_governor::Profile::S)));
    let r = &p.models["revenue"].settings;
    assert_eq!(r.lease, LeaseSpec::Profile(spillway_governor::Profile::L), "the comment wins over [defaults]");
    assert_eq!(r.materialize, spillway_tiers::Materialize::Parquet);
}

#[test]
fn selects_like_dbt() {
    let dir = example();
    let dag = Dag::build(&Project::load(dir.path()).unwrap()).unwrap();
    assert_eq!(dag.select("revenue").unwrap(), vec!["revenue"]);
    assert_eq!(dag.select("+revenue").unwrap(), vec!["order_lines", "revenue"]);
    assert_eq!(dag.select("order_lines+").unwrap(), vec!["order_lines", "revenue", "top"]);
    assert!(dag.select("nope").unwrap_err().contains("no model named"));
}

fn load_err(files: &[(&str, &str)]) -> String {
    let dir = project(files);
    let err = Project::load(dir.path()).and_then(|p| Dag::build(&p)).unwrap_err();
    err.to_string().replace(&dir.path().display().to_string(), "P")
}

#[test]
fn errors_name_file_and_line() {
    let sources = "[sources.tpch]\ntype = \"tpch\"\nsf = 0.01\n";
    let e = load_err(&[("spillway.toml", sources), ("models/a.sql", "SELECT *\nFROM lineitem\nJOIN nowhere ON true")]);
    assert!(e.starts_with("P/models/a.sql:3: unknown table `nowhere`"), "{e}");
    let e = load_err(&[("models/a.sql", "SELECT 1\nFROM\nWHERE")]);
    assert!(e.starts_with("P/models/a.sql:3:"), "{e}");
    let e = load_err(&[("models/a.sql", "-- spillway: class=huge\nSELECT 1")]);
    assert!(e.starts_with("P/models/a.sql:1: class = \"huge\""), "{e}");
    let e = load_err(&[("models/a.sql", "CREATE TABLE t (x int)")]);
    assert!(e.contains("must be a SELECT"), "{e}");
    let e =
        load_err(&[("spillway.toml", "[sources.x]\ntype = \"tpch\"\nsf = \"big\"\n"), ("models/a.sql", "SELECT 1")]);
    assert!(e.starts_with("P/spillway.toml:"), "{e}");
    let e = load_err(&[
        ("models/a.sql", "SELECT * FROM b"),
        ("models/b.sql", "SELECT * FROM c"),
        ("models/c.sql", "SELECT * FROM a"),
    ]);
    assert!(e.starts_with("dependency cycle: ") && e.contains("a -> ") && e.contains("c"), "{e}");
    let e =
        load_err(&[("spillway.toml", "[sinks.s]\nmodel = \"zz\"\npath = \"x.csv\"\n"), ("models/a.sql", "SELECT 1")]);
    assert!(e.contains("[sinks.s]: model \"zz\" does not exist"), "{e}");
    let e = load_err(&[("spillway.toml", TOML), ("models/a.sql", "SELECT 1")]);
    assert!(e.contains("[models.order_lines]: there is no models/order_lines.sql"), "{e}");
}
