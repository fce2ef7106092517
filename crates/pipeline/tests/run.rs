//! Running projects under small budgets: failures skip descendants (or stop everything with
//! fail-fast), out-of-memory retries escalate, sinks publish atomically, validation reports every
//! problem before any work, and the run's records say what happened.
//!
//! Models read DataFusion's `range()` table function, so no data files are needed.

use spillway_governor::{Governor, GovernorConfig};
use spillway_pipeline::resume::Decision;
use spillway_pipeline::run::{run, RunOptions};
use spillway_pipeline::{Event, RunResults, Status};
use spillway_project::Project;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), files);
    dir
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Runs the project in `dir` under `budget_mib`, returning the results and the events seen.
async fn run_in(
    dir: &Path,
    budget_mib: u64,
    tweak: impl FnOnce(&mut RunOptions),
) -> (spillway_pipeline::Result<RunResults>, Vec<Event>) {
    run_under(dir, GovernorConfig::new(budget_mib << 20), tweak).await
}

/// [`run_in`] with the sampler effectively off: no pressure levels and no squeeze from the test
/// process's own (untracked) memory, which at a budget of a few MiB would reach `critical` and
/// requeue models. For tests of what a plan does inside its lease.
async fn run_unpressed(
    dir: &Path,
    budget_mib: u64,
    tweak: impl FnOnce(&mut RunOptions),
) -> (spillway_pipeline::Result<RunResults>, Vec<Event>) {
    let mut config = GovernorConfig::new(budget_mib << 20);
    config.sample_interval = std::time::Duration::from_secs(3600);
    run_under(dir, config, tweak).await
}

async fn run_under(
    dir: &Path,
    config: GovernorConfig,
    tweak: impl FnOnce(&mut RunOptions),
) -> (spillway_pipeline::Result<RunResults>, Vec<Event>) {
    let governor = Governor::new(config).unwrap();
    let mut options = RunOptions::new(2, dir.join(".spill"));
    tweak(&mut options);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let project = Project::load(dir).unwrap();
    let results =
        run(&project, &governor, options, Arc::new(move |e: &Event| seen.lock().unwrap().push(e.clone()))).await;
    let events = events.lock().unwrap().clone();
    (results, events)
}

const FAILING: &[(&str, &str)] = &[
    ("models/a.sql", "SELECT value AS v FROM range(100000)"),
    ("models/c.sql", "SELECT sum(v) AS total FROM a"),
    // Divides by zero at value 50000, in the middle of the stream.
    ("models/bad.sql", "-- the bad one\nSELECT 10 / (value - 50000) AS x FROM range(100000)"),
    ("models/bad_child.sql", "SELECT count(*) AS n FROM bad"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_model_skips_its_descendants_and_the_rest_goes_on() {
    let dir = project(FAILING);
    let (results, events) = run_in(dir.path(), 128, |_| {}).await;
    let r = results.unwrap();
    assert_eq!(r.status, Status::Error);
    let status = |m: &str| r.step(m).unwrap().status;
    assert_eq!(status("a"), Status::Ok);
    assert_eq!(status("c"), Status::Ok);
    assert_eq!(status("bad"), Status::Error);
    assert_eq!(status("bad_child"), Status::Skipped);
    let bad = r.step("bad").unwrap();
    let err = bad.error.as_deref().unwrap();
    assert!(err.contains("bad.sql") && err.to_lowercase().contains("divide by zero"), "{err}");
    assert!(r.step("bad_child").unwrap().error.as_deref().unwrap().contains("upstream bad"));

    // run_results.json: the issue's shape, on disk, with `latest` pointing at it.
    let run_dir = dir.path().join(".spillway/runs").join(&r.run_id);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run_results.json")).unwrap()).unwrap();
    for key in ["run_id", "budget_bytes", "peak_resident_bytes", "spilled_bytes", "steps"] {
        assert!(json.get(key).is_some(), "run_results.json lacks {key}");
    }
    assert_eq!(json["budget_bytes"], 128u64 << 20);
    let a = json["steps"].as_array().unwrap().iter().find(|s| s["name"] == "a").unwrap();
    for key in [
        "status",
        "tier",
        "lease_bytes",
        "peak_resident_bytes",
        "spilled_bytes",
        "rows",
        "bytes",
        "elapsed_ms",
        "error",
    ] {
        assert!(a.get(key).is_some(), "step lacks {key}");
    }
    assert_eq!(a["status"], "ok");
    assert_eq!(a["rows"], 100000);
    assert_eq!(a["tier"], "memory");
    assert!(a["lease_bytes"].as_u64().unwrap() > 0 && a["peak_resident_bytes"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::read_link(dir.path().join(".spillway/runs/latest")).unwrap(), Path::new(&r.run_id));
    let log = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"event\":\"model_finished\"")).count(), 4, "{log}");
    assert!(log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert!(events.iter().any(|e| matches!(e, Event::RunFinished { errors: 1, skipped: 1, ok: 2, .. })));
    // Temp space is gone.
    assert_eq!(
        std::fs::read_dir(dir.path().join(".spill/spillway"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_stops_everything_at_the_first_failure() {
    let dir = project(FAILING);
    let (results, _) = run_in(dir.path(), 128, |o| {
        o.fail_fast = true;
        o.jobs = 1;
    })
    .await;
    let r = results.unwrap();
    // Ready models start in name order: a, then bad (fails), then c would have.
    assert_eq!(r.step("a").unwrap().status, Status::Ok);
    assert_eq!(r.step("bad").unwrap().status, Status::Error);
    let c = r.step("c").unwrap();
    assert_eq!(c.status, Status::Skipped);
    assert!(c.error.as_deref().unwrap().contains("--fail-fast"), "{:?}", c.error);
    assert_eq!(r.step("bad_child").unwrap().status, Status::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_retried_with_a_larger_lease() {
    // A null-aware anti join (NOT IN over a nullable column) is the one hash join that cannot go
    // out of core (whether the subquery holds a NULL is a property of all of it): its build side
    // needs more than 1MiB.
    let sql = "-- spillway: profile=1MiB\nSELECT count(*) AS n FROM range(400000) a \
               WHERE a.value NOT IN (SELECT CASE WHEN value = 5 THEN NULL ELSE value + 1 END FROM range(400000))";
    let dir = project(&[("models/j.sql", sql)]);
    let (results, events) = run_in(dir.path(), 128, |_| {}).await;
    let r = results.unwrap();
    let j = r.step("j").unwrap();
    assert_eq!(j.status, Status::Ok, "{:?}", j.error);
    assert_eq!(j.attempts, 2);
    assert!(j.lease_bytes > 1 << 20);
    let retry = events.iter().find_map(|e| match e {
        Event::ModelRetry { escalation, error, .. } => Some((escalation.clone(), error.clone())),
        _ => None,
    });
    let (escalation, error) = retry.expect("a retry event");
    assert!(error.contains("Resources exhausted"), "{error}");
    assert!(escalation.contains("lease 1MiB ->"), "{escalation}");

    // With no retries left it fails, naming the step and what to change.
    write(dir.path(), &[("models/j.sql", &sql.replace("profile=1MiB", "profile=1MiB retries=0"))]);
    let (results, _) = run_in(dir.path(), 128, |_| {}).await;
    let r = results.unwrap();
    let j = r.step("j").unwrap();
    assert_eq!((j.status, j.attempts), (Status::Error, 1));
    assert!(j.error.as_deref().unwrap().contains("larger lease"), "{:?}", j.error);
}

fn escalations(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ModelRetry { escalation, .. } => Some(escalation.clone()),
            _ => None,
        })
        .collect()
}

/// Issue #13: escalation is chosen by what failed. Past the largest lease, only a step that can
/// help the operator that was refused is tried (one partition for a heavy model); when none can,
/// the model fails at once instead of retrying plans that change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_tries_only_what_can_help_the_refused_operator() {
    let sql = "-- spillway: profile=L retries=3\nSELECT count(*) AS n FROM range(3000000) a \
               WHERE a.value NOT IN (SELECT CASE WHEN value = 5 THEN NULL ELSE value + 1 END FROM range(3000000))";
    let dir = project(&[("models/j.sql", sql), ("spillway.toml", "[governor]\n")]);
    let (results, events) = run_unpressed(dir.path(), 16, |_| {}).await;
    let j = results.unwrap().step("j").unwrap().clone();
    let steps = escalations(&events);
    // L is 60% of the budget, so the first escalation is to all that may be lent (85%); a light
    // model already runs in one partition here (2 cores), so nothing else can help.
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0].starts_with("lease 9.60MiB -> 13.60MiB"), "{steps:?}");
    assert_eq!((j.status, j.attempts), (Status::Error, 2), "retries=3, but no third plan could help");
    assert!(j.error.as_deref().unwrap().contains("larger lease"), "{:?}", j.error);

    // A heavy model runs on both cores: one partition gives one build side the whole lease.
    write(dir.path(), &[("models/j.sql", &sql.replace("profile=L", "profile=L class=heavy"))]);
    let (results, events) = run_unpressed(dir.path(), 16, |_| {}).await;
    let j = results.unwrap().step("j").unwrap().clone();
    let steps = escalations(&events);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps[1].contains("1 partition(s), so one instance of HashJoinInput"), "{steps:?}");
    assert_eq!((j.status, j.attempts), (Status::Error, 3), "{:?}", j.error);
}

/// Issue #14: a TopK (ORDER BY .. LIMIT) whose rows do not fit its share runs as spillway's
/// external sort cut to the limit on the first attempt (DataFusion's TopK cannot spill), and the
/// model completes with the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topk_too_large_for_its_share_runs_as_a_spilling_sort() {
    let sql = "-- spillway: profile=L\nSELECT value, repeat('x', 40) || value AS pad FROM range(3000000) \
               ORDER BY value DESC LIMIT 600000";
    let dir = project(&[("models/top.sql", sql), ("spillway.toml", "[governor]\n")]);
    let (results, events) = run_unpressed(dir.path(), 16, |_| {}).await;
    let top = results.unwrap().step("top").unwrap().clone();
    let steps = escalations(&events);
    assert_eq!((top.status, top.rows, top.attempts), (Status::Ok, 600_000, 1), "{:?} {steps:?}", top.error);
    assert!(top.spilled_bytes > 0, "the external sort spilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_join_larger_than_any_lease_goes_out_of_core_on_the_first_attempt() {
    let sql = "SELECT count(*) AS n FROM range(3000000) a JOIN range(3000000) b ON a.value = b.value";
    let dir = project(&[("models/j.sql", sql), ("spillway.toml", "[governor]\n")]);
    let (results, _) = run_in(dir.path(), 16, |_| {}).await;
    let r = results.unwrap();
    let j = r.step("j").unwrap();
    assert_eq!((j.status, j.attempts, j.rows), (Status::Ok, 1, 1), "{:?}", j.error);
    assert_eq!(j.joins.len(), 1, "{:?}", j.joins);
    let join = &j.joins[0];
    assert!(join.out_of_core_partitions > 0 && join.buckets >= 16 && join.spilled_bytes > 0, "{join:?}");
    assert_eq!(join.output_rows, 3_000_000);
    // run_results.json carries the same figures.
    let text = std::fs::read_to_string(dir.path().join(".spillway/runs/latest/run_results.json")).unwrap();
    assert!(text.contains("\"out_of_core_partitions\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_failing_mid_write_leaves_the_previous_output_intact() {
    let toml = "[sinks.out]\nmodel = \"numbers\"\npath = \"out/numbers.parquet\"\n";
    let dir = project(&[("spillway.toml", toml), ("models/numbers.sql", "SELECT value AS v FROM range(100000)")]);
    let (results, _) = run_in(dir.path(), 128, |_| {}).await;
    let r = results.unwrap();
    let step = r.step("numbers").unwrap();
    assert_eq!((step.status, step.tier.as_deref()), (Status::Ok, Some("sink")));
    assert_eq!(step.sinks[0].rows, 100000);
    let out = dir.path().join("out/numbers.parquet");
    let before = std::fs::read(&out).unwrap();

    // Now the model fails after ~90000 rows have been written to the sink's temp file.
    write(dir.path(), &[("models/numbers.sql", "SELECT 10 / (value - 90000) AS v FROM range(100000)")]);
    let (results, _) = run_in(dir.path(), 128, |_| {}).await;
    assert_eq!(results.unwrap().step("numbers").unwrap().status, Status::Error);
    assert_eq!(std::fs::read(&out).unwrap(), before, "the previous output is untouched");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["numbers.parquet".to_string()], "no partial file is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_handed_off_by_size_and_read_downstream() {
    // 3M rows of one i64 column (~23MiB) outgrow the memory tier of a 32MiB budget (45%).
    let dir = project(&[
        ("models/small.sql", "SELECT value AS v FROM range(1000)"),
        ("models/big.sql", "SELECT value AS v FROM range(3000000)"),
        ("models/kept.sql", "-- spillway: checkpoint=true\nSELECT value AS v FROM range(1000)"),
        (
            "models/total.sql",
            "SELECT (SELECT count(*) FROM small) + (SELECT count(*) FROM big) + (SELECT count(*) FROM kept) AS n",
        ),
        ("spillway.toml", "[sinks.total]\nmodel = \"total\"\npath = \"total.csv\"\n"),
    ]);
    let (results, _) = run_in(dir.path(), 32, |o| o.jobs = 1).await;
    let r = results.unwrap();
    let tier = |m: &str| r.step(m).unwrap().tier.clone().unwrap();
    assert_eq!(tier("small"), "memory");
    assert_eq!(tier("big"), "ipc");
    assert_eq!(tier("kept"), "parquet");
    assert_eq!(std::fs::read_to_string(dir.path().join("total.csv")).unwrap(), "n\n3002000\n");

    // Forcing every hand-off to Parquet (for comparisons).
    let (results, _) = run_in(dir.path(), 32, |o| o.materialize = Some(spillway_tiers::Materialize::Parquet)).await;
    let r = results.unwrap();
    assert!(["small", "big", "kept", "total"].iter().all(|m| r.step(m).unwrap().tier.as_deref() == Some("parquet")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_reported_with_file_and_line_before_any_work() {
    let dir = project(&[
        ("models/a.sql", "SELECT value AS v FROM range(10)"),
        ("models/b.sql", "SELECT v,\n       nope\nFROM a"),
        ("models/c.sql", "SELECT v FROM a WHERE v > 'x' AND v IN (SELECT"),
        ("models/d.sql", "SELECT x.v, y.v FROM a x, a y"),
        ("models/e.sql", "SELECT * FROM b"),
        ("spillway.toml", "[sources.raw]\ntype = \"parquet\"\npath = \"data/missing.parquet\"\n"),
    ]);
    let (results, events) = run_in(dir.path(), 64, |_| {}).await;
    let err = results.unwrap_err().to_string();
    assert!(err.contains("spillway.toml:1") && err.contains("missing.parquet"), "{err}");
    assert!(events.is_empty(), "nothing started");

    std::fs::remove_file(dir.path().join("spillway.toml")).unwrap();
    let (results, _) = run_in(dir.path(), 64, |_| {}).await;
    let err = results.unwrap_err().to_string();
    assert!(err.contains("b.sql:2") && err.contains("nope"), "{err}");
    assert!(err.contains("c.sql:1"), "{err}");
    assert!(err.contains("d.sql:1") && err.contains("more than one column named v"), "{err}");
    assert!(!err.contains("e.sql"), "a model downstream of a bad one is not reported again: {err}");
    assert!(!dir.path().join(".spillway/runs").exists(), "no run was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_runs_a_subset_and_reads_unselected_upstreams_from_their_sinks() {
    let toml = "[sinks.a]\nmodel = \"a\"\npath = \"a.parquet\"\n";
    let dir = project(&[
        ("spillway.toml", toml),
        ("models/a.sql", "SELECT value AS v FROM range(10)"),
        ("models/b.sql", "SELECT sum(v) AS s FROM a"),
    ]);
    // b alone, before a was ever published: refused up front.
    let (results, _) = run_in(dir.path(), 64, |o| o.select = Some("b".into())).await;
    assert!(results.unwrap_err().to_string().contains("select +b"));
    let (results, _) = run_in(dir.path(), 64, |o| o.select = Some("+b".into())).await;
    assert_eq!(results.unwrap().steps.len(), 2);
    // Now a's sink file exists: b alone reads it.
    let (results, _) = run_in(dir.path(), 64, |o| o.select = Some("b".into())).await;
    let r = results.unwrap();
    assert_eq!(r.steps.len(), 1);
    assert_eq!((r.steps[0].status, r.steps[0].rows), (Status::Ok, 1));
}

/// Issue #13: `--resume` reuses every model the last run finished whose fingerprint matches
/// (SQL, settings, upstream, sources) and whose output is still there: a checkpoint's Parquet in
/// `.spillway/state/`, or its published sink file; the rest runs again, with the same answers as
/// a run from scratch. A changed model reruns with everything downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_resume_reuses_what_finished_and_reruns_the_rest() {
    let toml = "[sinks.total]\nmodel = \"total\"\npath = \"out/total.parquet\"\n";
    let dir = project(&[
        ("spillway.toml", toml),
        ("models/base.sql", "-- spillway: checkpoint\nSELECT value AS v FROM range(200000)"),
        ("models/total.sql", "SELECT sum(v) AS s, count(*) AS n FROM base"),
        ("models/flaky.sql", "SELECT 10 / (v - 100000) AS x FROM base"),
        ("models/after.sql", "SELECT count(*) AS n FROM flaky"),
    ]);
    let (first, _) = run_in(dir.path(), 128, |_| {}).await;
    let first = first.unwrap();
    assert_eq!(first.step("flaky").unwrap().status, Status::Error);
    assert_eq!(first.step("after").unwrap().status, Status::Skipped);
    let kept = dir.path().join(".spillway/state/base.parquet");
    assert_eq!(first.step("base").unwrap().kept.as_deref(), Some(kept.as_path()));
    assert!(kept.is_file(), "a checkpoint outlives its run");

    // What a resume would do, and why.
    let project = Project::load(dir.path()).unwrap();
    let (previous, decisions) = spillway_pipeline::resume::preview(&project, None).await.unwrap();
    assert_eq!(previous.as_deref(), Some(first.run_id.as_str()));
    let decision = |m: &str| decisions.iter().find(|(n, _)| n == m).unwrap().1.clone();
    assert!(matches!(decision("base"), Decision::Reuse { input: Some(ref p), .. } if p == &kept));
    assert!(matches!(decision("total"), Decision::Reuse { .. }));
    assert!(
        matches!(decision("flaky"), Decision::Rerun(ref why) if why.contains("did not complete")),
        "{:?}",
        decision("flaky")
    );

    // Fixed, resumed: base and total are reused, flaky and after run, reading base's checkpoint.
    write(dir.path(), &[("models/flaky.sql", "SELECT 10 / (v + 1) AS x FROM base")]);
    let (second, _) = run_in(dir.path(), 128, |o| o.resume = true).await;
    let second = second.unwrap();
    assert_eq!(second.status, Status::Ok, "{:?}", second.steps);
    for m in ["base", "total"] {
        assert_eq!(second.step(m).unwrap().reused_from.as_deref(), Some(first.run_id.as_str()), "{m}");
    }
    for m in ["flaky", "after"] {
        let s = second.step(m).unwrap();
        assert_eq!((s.status, s.reused_from.as_deref()), (Status::Ok, None), "{m}");
    }
    assert_eq!(second.step("flaky").unwrap().rows, 200_000);

    // A resume of the resume reuses everything; a changed base reruns base and all below it.
    let (third, _) = run_in(dir.path(), 128, |o| o.resume = true).await;
    assert!(third.unwrap().steps.iter().all(|s| s.reused_from.is_some()));
    write(dir.path(), &[("models/base.sql", "-- spillway: checkpoint\nSELECT value AS v FROM range(100000)")]);
    let (fourth, _) = run_in(dir.path(), 128, |o| o.resume = true).await;
    let fourth = fourth.unwrap();
    assert!(fourth.steps.iter().all(|s| s.reused_from.is_none() && s.status == Status::Ok), "{:?}", fourth.steps);
    assert_eq!(fourth.step("flaky").unwrap().rows, 100_000);
}

/// Issue #13: at critical memory pressure the scheduler cancels the lowest-priority running
/// model (the light one started last) and runs it again disk-first; both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_critical_pressure_cancels_a_model_and_requeues_it_disk_first() {
    let slow = "SELECT count(*) AS n FROM (SELECT value FROM range(6000000) ORDER BY value DESC LIMIT 5000000)";
    let dir = project(&[("models/one.sql", slow), ("models/two.sql", slow)]);
    let mut config = GovernorConfig::new(256 << 20);
    config.sample_interval = std::time::Duration::from_secs(3600); // pressure is set by the test
    let governor = Governor::new(config).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (seen, g) = (events.clone(), governor.clone());
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let observer = Arc::new(move |e: &Event| {
        match e {
            Event::ModelStarted { .. } if started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 => {
                g.set_pressure(spillway_governor::Pressure::Critical)
            }
            Event::ModelRetry { error, .. } if error.contains("critical") => {
                g.set_pressure(spillway_governor::Pressure::Normal)
            }
            _ => {}
        }
        seen.lock().unwrap().push(e.clone());
    });
    let project = Project::load(dir.path()).unwrap();
    let r = run(&project, &governor, RunOptions::new(2, dir.path().join(".spill")), observer).await.unwrap();
    assert_eq!(r.status, Status::Ok, "{:?}", r.steps);
    let events = events.lock().unwrap().clone();
    let requeued: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            // (A refused reservation's retry also names the pressure level in its error.)
            Event::ModelRetry { model, error, escalation, .. } if escalation.contains("disk-first") => {
                assert!(error.contains("cancelled: memory pressure reached critical"), "{error}");
                Some(model.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(requeued, ["two"], "the model started last is cancelled, once");
    let two = r.step("two").unwrap();
    assert_eq!((two.rows, two.partitions), (1, 1), "rerun on one partition");
    assert_eq!(two.tier.as_deref(), Some("ipc"), "hand-off on disk");
}

/// Issue #13: a model's sinks are published together. A sink that cannot be written publishes
/// none (the other's staged file is removed, the previous outputs stay); a rename refused after
/// another sink was published is reported with what was and was not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_sinks_are_published_together_or_the_error_says_which_were() {
    let sinks = |second: &str| {
        format!("[sinks.a_out]\nmodel = \"m\"\npath = \"out/a.parquet\"\n[sinks.b_out]\nmodel = \"m\"\npath = \"{second}\"\n")
    };
    let dir =
        project(&[("spillway.toml", &sinks("out/b.parquet")), ("models/m.sql", "SELECT value AS v FROM range(1000)")]);
    let (r, _) = run_in(dir.path(), 128, |_| {}).await;
    assert_eq!(r.unwrap().status, Status::Ok);
    let before = std::fs::read(dir.path().join("out/a.parquet")).unwrap();
    let staging = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("spillway-tmp"))
            .collect()
    };

    // The second sink cannot be staged (a PostgreSQL server nobody listens on) after the first
    // was: nothing is published.
    let unreachable = "[sinks.a_out]\nmodel = \"m\"\npath = \"out/a.parquet\"\n[sinks.b_out]\nmodel = \"m\"\n\
                       type = \"postgres\"\nurl = \"postgresql://nobody@127.0.0.1:1/db\"\ntable = \"t\"\n";
    write(dir.path(), &[("spillway.toml", unreachable), ("models/m.sql", "SELECT value + 1 AS v FROM range(1000)")]);
    let (r, _) = run_in(dir.path(), 128, |_| {}).await;
    let m = r.unwrap().step("m").unwrap().clone();
    assert_eq!(m.status, Status::Error);
    assert!(m.error.as_deref().unwrap().contains("sink b_out"), "{:?}", m.error);
    assert_eq!(std::fs::read(dir.path().join("out/a.parquet")).unwrap(), before, "a_out is not published alone");
    assert!(staging(&dir.path().join("out")).is_empty(), "{:?}", staging(&dir.path().join("out")));

    // The second sink's rename is refused (a folder is in the way) after the first was
    // published: the error says so.
    std::fs::create_dir_all(dir.path().join("out/b2.parquet/in-the-way")).unwrap();
    write(dir.path(), &[("spillway.toml", &sinks("out/b2.parquet"))]);
    let (r, _) = run_in(dir.path(), 128, |_| {}).await;
    let m = r.unwrap().step("m").unwrap().clone();
    let e = m.error.as_deref().unwrap();
    assert!(e.contains("published a_out; not published b_out"), "{e}");
    assert!(staging(&dir.path().join("out")).is_empty(), "{:?}", staging(&dir.path().join("out")));
}
