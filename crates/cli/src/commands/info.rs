//! `spillway info`: what was detected and what the budget comes to.

use crate::settings::Settings;
use anyhow::Result;
use spillway_governor::{fmt_bytes, jemalloc, limits, MemorySpec, Profile};

pub fn run(s: &Settings) -> Result<()> {
    let b = &s.budget;
    let g = &s.governor;
    let how = match b.spec {
        MemorySpec::Percent(p) => format!("{p}% of the limit"),
        MemorySpec::Bytes(_) => "as given".to_string(),
    };
    println!("spillway {}", env!("CARGO_PKG_VERSION"));
    println!(
        "memory limit  {} ({}; MemTotal {})",
        fmt_bytes(b.limit.bytes),
        b.limit.source,
        fmt_bytes(b.limit.mem_total)
    );
    println!("budget        {} ({how})", fmt_bytes(b.bytes));
    println!(
        "leasable      {} (headroom {:.0}% kept for untracked allocations)",
        fmt_bytes(g.leasable()),
        g.headroom * 100.0
    );
    println!(
        "profiles      S {} · M {} · L {} · heavy slots {}",
        fmt_bytes(g.profile_bytes(Profile::S)),
        fmt_bytes(g.profile_bytes(Profile::M)),
        fmt_bytes(g.profile_bytes(Profile::L)),
        g.heavy_slots
    );
    println!(
        "pressure      moderate >= {:.0}% · high >= {:.0}% · critical >= {:.0}% of the budget",
        g.pressure.moderate * 100.0,
        g.pressure.high * 100.0,
        g.pressure.critical * 100.0
    );
    println!("cores         {} ({})", s.cores.count, s.cores.source);
    let root = spillway_tiers::SpillRoot::path_for(&s.spill_dir);
    let free = spillway_tiers::rundir::free_space(&root).map_or("unknown".into(), fmt_bytes);
    let quota = fmt_bytes(s.max_spill.unwrap_or_else(|| spillway_tiers::DiskQuota::default_for(&root)));
    // Only reports: the next `run` or `sql` removes them.
    let stale = spillway_tiers::SpillRoot::inspect(&s.spill_dir);
    let stale = if stale.dirs.is_empty() {
        String::new()
    } else {
        format!(
            "; {} run folder(s) of dead processes, {}, removed at the next run",
            stale.dirs.len(),
            fmt_bytes(stale.bytes)
        )
    };
    println!("spill root    {} (free {free}, quota {quota}{stale})", root.display());
    let allocator = if jemalloc::is_active() { "jemalloc (global allocator)" } else { "system (jemalloc not active)" };
    let je = jemalloc::read().unwrap_or_default();
    println!(
        "allocator     {allocator}: allocated {}, resident {}; process RSS {}",
        fmt_bytes(je.allocated),
        fmt_bytes(je.resident),
        fmt_bytes(limits::process_rss().unwrap_or(0))
    );
    match &g.ledger {
        None => println!("ledger        off: this process keeps to its own budget only"),
        Some(l) => {
            let holders = spillway_governor::ledger::read_live(&l.path);
            let held: u64 = holders.iter().map(|h| h.bytes).sum();
            println!(
                "ledger        {}: all spillway processes together lease at most {} (machine budget less headroom); {} held now",
                l.path.display(),
                fmt_bytes(l.capacity),
                fmt_bytes(held)
            );
            for h in holders {
                println!("                pid {:<8} {:>9}  {}", h.pid, fmt_bytes(h.bytes), h.label);
            }
        }
    }
    println!("isolation     {}", spillway_isolate::Confinement::detect().describe());
    println!("config        {}", s.config_file.as_ref().map_or("none".into(), |p| p.display().to_string()));
    Ok(())
}
