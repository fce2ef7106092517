//! `spillway bench tpch`: the 22 TPC-H queries, each in a fresh `spillway sql` process, under
//! spillway's governor and under DataFusion's stock `GreedyMemoryPool` of the same size, one
//! query at a time with the engines interleaved. Peak RSS comes from the kernel (`wait4`'s
//! `ru_maxrss` of the child), so a query that is OOM-killed or leaks does not affect the next.

use crate::args::{BenchEngine, BenchTpchArgs};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use spillway_engine::tpch;
use spillway_governor::fmt_bytes;
use spillway_project::sources;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One query on one engine: what `--json` writes (a list of these).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    query: usize,
    engine: &'static str,
    /// ok, resources-exhausted, oom-killed, error or timeout.
    status: &'static str,
    wall_ms: u64,
    peak_rss_bytes: u64,
    spilled_bytes: u64,
    rows: Option<u64>,
    checksum: Option<String>,
    error: Option<String>,
}

pub fn run(settings: &Settings, args: BenchTpchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the spillway binary")?;
    let data = args.data.clone().unwrap_or_else(|| default_data_dir(args.sf));
    ensure_data(&exe, &data, args.sf)?;
    let queries: Vec<usize> = if args.queries.is_empty() { (1..=22).collect() } else { args.queries.clone() };
    if let Some(q) = queries.iter().find(|q| !(1..=22).contains(*q)) {
        bail!("--queries: there is no TPC-H query {q} (1 to 22)");
    }
    let budget = settings.budget.bytes;
    let spill = settings.spill_dir.clone();
    println!(
        "TPC-H sf{} at {} ({}), {} queries × {:?}, timeout {}s",
        args.sf,
        fmt_bytes(budget),
        data.display(),
        queries.len(),
        args.engines,
        args.timeout
    );
    let mut rows = Vec::new();
    for &q in &queries {
        let sql = tpch::query(q, args.sf).expect("query number checked");
        for engine in &args.engines {
            let row = run_one(&exe, *engine, q, &sql, &data, budget, &spill, Duration::from_secs(args.timeout));
            println!(
                "q{:02} {:<10} {:<19} {:>8.2}s  RSS {:>10}  spilled {:>10}  {}",
                q,
                row.engine,
                row.status,
                row.wall_ms as f64 / 1000.0,
                fmt_bytes(row.peak_rss_bytes),
                fmt_bytes(row.spilled_bytes),
                row.checksum.as_deref().or(row.error.as_deref()).unwrap_or("")
            );
            rows.push(row);
        }
    }
    println!();
    for engine in &args.engines {
        let name = engine_name(*engine);
        let mine: Vec<&Row> = rows.iter().filter(|r| r.engine == name).collect();
        let ok: Vec<&&Row> = mine.iter().filter(|r| r.status == "ok").collect();
        let total: f64 = ok.iter().map(|r| r.wall_ms as f64 / 1000.0).sum();
        let geo =
            (ok.iter().map(|r| (r.wall_ms.max(1) as f64 / 1000.0).ln()).sum::<f64>() / ok.len().max(1) as f64).exp();
        let max_rss = mine.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0);
        println!(
            "{name:<10} completed {}/{} · sum {:.2}s · geomean {} (of completed) · max peak RSS {} = {:.2} × budget",
            ok.len(),
            mine.len(),
            total,
            if ok.is_empty() { "-".to_string() } else { format!("{geo:.3}s") },
            fmt_bytes(max_rss),
            max_rss as f64 / budget as f64
        );
    }
    let mismatched: Vec<usize> = queries
        .iter()
        .copied()
        .filter(|q| {
            let sums: std::collections::BTreeSet<&str> = rows
                .iter()
                .filter(|r| r.query == *q && r.status == "ok")
                .filter_map(|r| r.checksum.as_deref())
                .collect();
            sums.len() > 1
        })
        .collect();
    if !mismatched.is_empty() {
        println!("results differ between engines for queries {mismatched:?}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn engine_name(engine: BenchEngine) -> &'static str {
    match engine {
        BenchEngine::Spillway => "spillway",
        BenchEngine::Datafusion => "datafusion",
    }
}

/// Where generated data is cached: `~/.cache/spillway/tpch-sf<N>`.
fn default_data_dir(sf: f64) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("spillway").join(format!("tpch-sf{sf}"))
}

/// Generates TPC-H at `sf` into `data` (in a child process) unless a complete copy is there.
fn ensure_data(exe: &Path, data: &Path, sf: f64) -> Result<()> {
    if !sources::is_generated(data) {
        println!("generating TPC-H sf{sf} into {} (once)", data.display());
    }
    let generator = sources::Generator::Command(exe.to_path_buf());
    sources::ensure_tpch(data, sf, 1, &generator, &|_, _| {}).with_context(|| format!("generating TPC-H sf{sf}"))
}

/// Runs one query in a fresh `spillway sql` process and classifies how it ended.
#[allow(clippy::too_many_arguments)]
fn run_one(
    exe: &Path,
    engine: BenchEngine,
    q: usize,
    sql: &str,
    data: &Path,
    budget: u64,
    spill: &Path,
    timeout: Duration,
) -> Row {
    let stats =
        std::env::temp_dir().join(format!("spillway-bench-{}-q{q}-{}.json", std::process::id(), engine_name(engine)));
    let _ = std::fs::remove_file(&stats);
    let pool = match engine {
        BenchEngine::Spillway => "spillway",
        BenchEngine::Datafusion => "greedy",
    };
    let mut row = Row {
        query: q,
        engine: engine_name(engine),
        status: "error",
        wall_ms: 0,
        peak_rss_bytes: 0,
        spilled_bytes: 0,
        rows: None,
        checksum: None,
        error: None,
    };
    let started = Instant::now();
    let child = Command::new(exe)
        .arg("sql")
        .args(["--memory", &budget.to_string(), "--pool", pool, "--checksum", "--data"])
        .arg(data)
        .arg("--stats-json")
        .arg(&stats)
        .arg("--spill-dir")
        .arg(spill)
        .arg("--") // the query starts with a `--` comment
        .arg(sql)
        .env("SPILLWAY_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            row.error = Some(format!("could not start {}: {e}", exe.display()));
            return row;
        }
    };
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (status, maxrss_kb, timed_out) = wait_with_rusage(child.id() as libc::pid_t, timeout);
    row.wall_ms = started.elapsed().as_millis() as u64;
    row.peak_rss_bytes = maxrss_kb * 1024;
    let err_text = reader.join().unwrap_or_default();
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    row.status = if timed_out {
        "timeout"
    } else if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        "oom-killed"
    } else if exited_ok {
        "ok"
    } else if err_text.contains("Resources exhausted") || err_text.contains("ResourcesExhausted") {
        "resources-exhausted"
    } else {
        "error"
    };
    if let Ok(text) = std::fs::read_to_string(&stats) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            row.spilled_bytes = v["spilled_bytes"].as_u64().unwrap_or(0);
            row.rows = v["rows"].as_u64();
            row.checksum = v["checksum"].as_str().map(String::from);
        }
        let _ = std::fs::remove_file(&stats);
    }
    if row.status != "ok" {
        let lines: Vec<&str> = err_text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let last = lines.iter().find(|l| l.starts_with("error:")).or(lines.last()).copied().unwrap_or("");
        row.error =
            Some(if last.is_empty() { format!("exit status {status:#x}") } else { last.chars().take(400).collect() });
    }
    row
}

/// Waits for `pid`, killing it after `timeout`; returns its wait status, peak RSS in KiB (from
/// the kernel's rusage) and whether it was killed for time.
fn wait_with_rusage(pid: libc::pid_t, timeout: Duration) -> (i32, u64, bool) {
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child; `rusage` is a valid out-pointer.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            return (status, usage.ru_maxrss.max(0) as u64, timed_out);
        }
        if r < 0 {
            return (-1, 0, timed_out);
        }
        if !timed_out && Instant::now() >= deadline {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            timed_out = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
