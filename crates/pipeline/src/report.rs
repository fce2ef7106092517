//! `report.html`: one self-contained page (inline SVG and CSS, no scripts, nothing fetched) that
//! shows a run: a summary, the memory timeline (budget line, resident and allocated memory,
//! each model's lease as a band), a lane per model, and the steps table. A `views serve`
//! session's page is `spillway_live::report`'s; both draw with `spillway_governor::chart`.

use crate::results::{RunResults, Status};
use spillway_governor::chart::{axes, card, esc, secs, CSS, H, LEFT, W};
use spillway_governor::{fmt_bytes, Sample};
use std::fmt::Write;

const COLORS: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

/// Renders the report of `results` with the memory `timeline` (times relative to the run start).
pub fn render(results: &RunResults, timeline: &[Sample]) -> String {
    let mut h = String::new();
    let title = format!("spillway run {}", results.run_id);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title><style>{}</style></head><body>",
        esc(&title),
        CSS
    );
    let ok = results.steps.iter().filter(|s| s.status == Status::Ok).count();
    let ratio = results.peak_resident_bytes as f64 / results.budget_bytes.max(1) as f64;
    let _ = write!(
        h,
        "<h1>{}</h1><p class=sub>{} · started {} · {}</p>",
        esc(&title),
        esc(&results.project.display().to_string()),
        esc(&results.started_at),
        if results.status == Status::Ok { "<b class=ok>ok</b>" } else { "<b class=err>failed</b>" }
    );
    let _ = write!(
        h,
        "<div class=cards>{}{}{}{}{}</div>",
        card("models ok", &format!("{ok} of {}", results.steps.len())),
        card("wall time", &secs(results.elapsed_ms)),
        card("budget", &fmt_bytes(results.budget_bytes)),
        card("peak resident", &format!("{} ({:.0}% of budget)", fmt_bytes(results.peak_resident_bytes), ratio * 100.0)),
        card("spilled", &fmt_bytes(results.spilled_bytes)),
    );
    h.push_str("<h2>Memory</h2>");
    h.push_str(&chart(results, timeline));
    h.push_str("<h2>Models</h2>");
    h.push_str(&lanes(results));
    h.push_str(&table(results));
    h.push_str("<p class=sub>Resident = anonymous RSS (the process's heap and stacks; what the budget governs). Allocated = bytes jemalloc has handed out. Bands = each model's lease from grant to end.</p></body></html>\n");
    h
}

fn chart(results: &RunResults, timeline: &[Sample]) -> String {
    let end_ms = results.elapsed_ms.max(timeline.last().map_or(1, |s| s.t_ms)).max(1) as f64;
    let peak = timeline.iter().map(|s| s.rss_anon.max(s.allocated)).max().unwrap_or(0);
    let ymax = (results.budget_bytes as f64 * 1.15).max(peak as f64 * 1.05).max(1.0);
    let x = |t: u64| LEFT + (t as f64 / end_ms) * (W - LEFT - 10.0);
    let y = |b: u64| H - 20.0 - (b as f64 / ymax) * (H - 30.0);
    let mut s = format!("<svg class=chart viewBox='0 0 {W} {H}' role=img aria-label='memory timeline'>");
    if results.sources_ready_ms > 0 {
        let _ = write!(
            s,
            "<rect class=prep x='{LEFT}' y='10' width='{:.1}' height='{:.1}'/><text class=axis x='{:.1}' y='24'>preparing sources</text>",
            x(results.sources_ready_ms) - LEFT,
            H - 30.0,
            LEFT + 4.0
        );
    }
    // Lease bands: between consecutive grant/end times the set of holders is constant; stack
    // them in run order.
    let held: Vec<(usize, &crate::results::StepResult)> =
        results.steps.iter().enumerate().filter(|(_, s)| s.lease_bytes > 0 && s.status != Status::Skipped).collect();
    let mut cuts: Vec<u64> = held.iter().flat_map(|(_, s)| [s.leased_ms, s.finished_ms.max(s.leased_ms + 1)]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    for w in cuts.windows(2) {
        let (from, to) = (w[0], w[1]);
        let mut base = 0;
        for (i, st) in held.iter().filter(|(_, s)| s.leased_ms <= from && to <= s.finished_ms.max(s.leased_ms + 1)) {
            let top = base + st.lease_bytes;
            let _ = write!(
                s,
                "<rect class=band x='{:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{}'><title>{} lease {}</title></rect>",
                x(from),
                y(top),
                (x(to) - x(from)).max(0.5),
                (y(base) - y(top)).max(0.5),
                COLORS[i % COLORS.len()],
                esc(&st.name),
                fmt_bytes(st.lease_bytes),
            );
            base = top;
        }
    }
    // Axes and grid.
    axes(&mut s, ymax, end_ms, &x, &y);
    // Budget and leasable lines.
    for (label, bytes, class) in
        [("budget", results.budget_bytes, "budget"), ("leasable", results.leasable_bytes, "leasable")]
    {
        let _ = write!(
            s,
            "<line class={class} x1='{LEFT}' x2='{}' y1='{:.1}' y2='{:.1}'/><text class='axis {class}' x='{}' y='{:.1}' text-anchor=end>{label} {}</text>",
            W - 10.0,
            y(bytes),
            y(bytes),
            W - 12.0,
            y(bytes) - 4.0,
            fmt_bytes(bytes)
        );
    }
    for (class, f) in
        [("resident", (|s: &Sample| s.rss_anon) as fn(&Sample) -> u64), ("allocated", |s: &Sample| s.allocated)]
    {
        let points: Vec<String> = timeline.iter().map(|smp| format!("{:.1},{:.1}", x(smp.t_ms), y(f(smp)))).collect();
        if !points.is_empty() {
            let _ = write!(s, "<polyline class={class} points='{}'/>", points.join(" "));
        }
    }
    s.push_str("</svg><p class=legend><span class='key resident'></span>resident <span class='key allocated'></span>allocated <span class='key budget'></span>budget <span class='key leasable'></span>leasable <span class='key band'></span>leases</p>");
    s
}

fn lanes(results: &RunResults) -> String {
    let end_ms = results.elapsed_ms.max(1) as f64;
    let row = 22.0;
    let height = row * results.steps.len() as f64 + 6.0;
    let x = |t: u64| 230.0 + (t as f64 / end_ms) * (W - 240.0);
    let mut s = format!("<svg class=lanes viewBox='0 0 {W} {height}' role=img aria-label='model lanes'>");
    for (i, st) in results.steps.iter().enumerate() {
        let top = 3.0 + row * i as f64;
        let _ = write!(s, "<text class=lane x='224' y='{:.1}' text-anchor=end>{}</text>", top + 14.0, esc(&st.name));
        if st.status == Status::Skipped {
            let _ = write!(s, "<text class='lane skip' x='234' y='{:.1}'>skipped</text>", top + 14.0);
            continue;
        }
        let color = if st.status == Status::Error { "#e15759" } else { COLORS[i % COLORS.len()] };
        let _ = write!(
            s,
            "<rect class=wait x='{:.1}' y='{top:.1}' width='{:.1}' height='{}'><title>waiting for its lease</title></rect><rect x='{:.1}' y='{top:.1}' width='{:.1}' height='{}' fill='{color}'><title>{} {} · {} · peak {}</title></rect>",
            x(st.started_ms),
            (x(st.leased_ms) - x(st.started_ms)).max(0.0),
            row - 6.0,
            x(st.leased_ms),
            (x(st.finished_ms) - x(st.leased_ms)).max(1.0),
            row - 6.0,
            esc(&st.name),
            secs(st.elapsed_ms),
            st.tier.as_deref().unwrap_or("-"),
            fmt_bytes(st.peak_resident_bytes)
        );
    }
    s.push_str("</svg>");
    s
}

fn table(results: &RunResults) -> String {
    let mut s = String::from(
        "<table><thead><tr><th>model</th><th>status</th><th>class</th><th>lease</th><th>tier</th><th>rows</th><th>bytes</th><th>peak resident</th><th>spilled</th><th>time</th><th>attempts</th><th>note</th></tr></thead><tbody>",
    );
    for st in &results.steps {
        let status = match st.status {
            Status::Ok => "<span class=ok>ok</span>",
            Status::Error => "<span class=err>error</span>",
            Status::Skipped => "<span class=skip>skipped</span>",
        };
        let mut note = st.error.clone().or_else(|| st.tier_reason.clone()).unwrap_or_default();
        if let Some(i) = &st.isolated {
            let _ = write!(
                note,
                "{}isolated: child pid {} ({}), peak {} of its {} limit{}",
                if note.is_empty() { "" } else { "; " },
                i.pid,
                i.confinement,
                i.peak_bytes.map_or("unknown".into(), fmt_bytes),
                fmt_bytes(i.limit_bytes),
                if i.oom_killed { ", oom-killed" } else { "" }
            );
        }
        if let Some(c) = &st.cluster {
            let _ = write!(
                note,
                "{}ballista job {} at {}: queued {}ms, ran {}ms on the cluster, {}ms until the last row, {} fetched",
                if note.is_empty() { "" } else { "; " },
                c.job.job_id,
                c.url,
                c.job.scheduling_ms,
                c.job.execution_ms,
                c.job.total_ms,
                fmt_bytes(c.job.transferred_bytes)
            );
        }
        let sinks: Vec<String> = st
            .sinks
            .iter()
            .map(|k| match &k.skipped {
                Some(why) => format!("→ {} ({why})", k.name),
                None => format!("→ {}", k.path.display()),
            })
            .collect();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{status}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=note>{}{}</td></tr>",
            esc(&st.name),
            esc(&st.class),
            fmt_bytes(st.lease_bytes),
            esc(st.tier.as_deref().unwrap_or("-")),
            st.rows,
            fmt_bytes(st.bytes),
            fmt_bytes(st.peak_resident_bytes),
            fmt_bytes(st.spilled_bytes),
            secs(st.elapsed_ms),
            st.attempts,
            esc(&note),
            if sinks.is_empty() { String::new() } else { format!("<br>{}", esc(&sinks.join(", "))) }
        );
    }
    s.push_str("</tbody></table>");
    s
}
