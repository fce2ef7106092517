//! `spillway init DIR`: a small working project over generated TPC-H data, to copy from.

use crate::args::InitArgs;
use anyhow::{bail, Context, Result};

const FILES: [(&str, &str); 5] = [
    (
        "spillway.toml",
        r#"# A spillway project: models/*.sql are SELECTs, run as a DAG under one memory budget.
# Run it:   spillway run .        Check it:  spillway plan .        See it:  spillway report .

# memory = "4GiB"          # the budget (default 60% of the machine or cgroup limit)

[sources.tpch]             # the eight TPC-H tables, generated once into .spillway/data/
type = "tpch"
sf = 0.1

# Other sources: type = "parquet" | "csv" | "json" | "arrow", path = "data/*.parquet"

[sinks.revenue]            # a model's output published as a file (atomically)
model = "revenue_by_nation"
path = "output/revenue_by_nation.parquet"

[defaults]                 # per-model settings; override in a model's first lines
profile = "M"              # lease: S, M, L (10/30/60% of the budget) or a size such as 512MiB
class = "light"            # heavy models run one at a time with all cores
"#,
    ),
    (
        "models/order_lines.sql",
        "-- One row per order line with its order's customer and date.\n\
         -- spillway: class=heavy profile=L\n\
         SELECT l.l_orderkey, l.l_linenumber, o.o_custkey, o.o_orderdate,\n       \
         l.l_extendedprice * (1 - l.l_discount) AS net_revenue\n\
         FROM lineitem l JOIN orders o ON l.l_orderkey = o.o_orderkey\n",
    ),
    (
        "models/revenue_by_nation.sql",
        "SELECT n.n_name AS nation, date_trunc('year', ol.o_orderdate) AS year,\n       \
         sum(ol.net_revenue) AS revenue, count(DISTINCT ol.l_orderkey) AS orders\n\
         FROM order_lines ol\n\
         JOIN customer c ON c.c_custkey = ol.o_custkey\n\
         JOIN nation n ON n.n_nationkey = c.c_nationkey\n\
         GROUP BY 1, 2\n\
         ORDER BY 1, 2\n",
    ),
    (
        "models/check_revenue_positive.sql",
        "-- A check passes when it returns no rows.\n\
         -- spillway: check\n\
         SELECT * FROM revenue_by_nation WHERE revenue <= 0\n",
    ),
    (".gitignore", ".spillway/\noutput/\n"),
];

pub fn run(args: InitArgs) -> Result<()> {
    let dir = &args.dir;
    if dir.join("spillway.toml").exists() {
        bail!("{} already holds a spillway.toml; init creates new projects only", dir.display());
    }
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if path.exists() {
            bail!("{} already exists; not overwriting it", path.display());
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created a spillway project in {}:", dir.display());
    for (name, _) in FILES {
        println!("  {name}");
    }
    println!("next: spillway plan {0} && spillway run {0}", dir.display());
    Ok(())
}
