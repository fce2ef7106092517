//! `report.html` of a `views serve` session: its snapshot, the memory timeline with the views'
//! state, hydration and transactions marked, and a row per view (drawn like a run's report,
//! with `spillway_governor::chart`).

use crate::serve::{Mark, Memory, Snapshot};
use spillway_governor::chart::{axes, card, esc, secs, CSS, H, LEFT, W};
use spillway_governor::{fmt_bytes, Sample};
use std::fmt::Write;

/// The report of a `views serve` session: its snapshot, memory now, marks and memory timeline.
pub fn render(snapshot: &Snapshot, memory: &Memory, marks: &[Mark], timeline: &[Sample]) -> String {
    let mut h = String::new();
    let title = "spillway views serve";
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title><style>{CSS}</style></head><body><h1>{title}</h1><p class=sub>started {} · {} · {} transaction(s) in the log</p>",
        esc(&snapshot.started_at),
        format!("{:?}", snapshot.phase).to_lowercase(),
        snapshot.transactions
    );
    let peak = timeline.iter().map(|s| s.rss_anon).max().unwrap_or(0);
    let _ = write!(
        h,
        "<div class=cards>{}{}{}{}{}{}{}</div>",
        card("views", &format!("{} of {} populated", snapshot.views_populated, snapshot.views_total)),
        card("hydration", &secs(snapshot.populate_ms)),
        card("applied", &format!("{} files, {} rows", snapshot.applied_now, snapshot.change_rows)),
        card("latency p50 / p99", &format!("{:.1}ms / {:.1}ms", snapshot.latency.p50_ms, snapshot.latency.p99_ms)),
        card("budget", &fmt_bytes(memory.budget)),
        card(
            "peak resident",
            &format!("{} ({:.0}% of budget)", fmt_bytes(peak), peak as f64 * 100.0 / memory.budget.max(1) as f64)
        ),
        card("views' state", &fmt_bytes(memory.state)),
    );
    h.push_str("<h2>Memory</h2>");
    let end_ms = timeline.last().map_or(1, |s| s.t_ms).max(marks.last().map_or(1, |m| m.t_ms)).max(1) as f64;
    let top = timeline
        .iter()
        .map(|s| s.rss_anon.max(s.allocated))
        .chain(marks.iter().map(|m| m.state_bytes))
        .max()
        .unwrap_or(0);
    let ymax = (memory.budget as f64 * 1.15).max(top as f64 * 1.05).max(1.0);
    let x = |t: u64| LEFT + (t as f64 / end_ms) * (W - LEFT - 10.0);
    let y = |b: u64| H - 20.0 - (b as f64 / ymax) * (H - 30.0);
    let mut s = format!("<svg class=chart viewBox='0 0 {W} {H}' role=img aria-label='memory timeline'>");
    axes(&mut s, ymax, end_ms, &x, &y);
    if let Some(m) = marks.iter().find(|m| m.hydrated) {
        let _ = write!(s, "<rect class=prep x='{LEFT}' y='10' width='{:.1}' height='{:.1}'/><text class=axis x='{:.1}' y='24'>hydrating</text>", x(m.t_ms) - LEFT, H - 30.0, LEFT + 4.0);
    }
    // One tick per transaction (at most one per pixel column).
    let mut last_x = f64::NEG_INFINITY;
    for m in marks.iter().filter(|m| !m.hydrated) {
        if x(m.t_ms) - last_x >= 1.0 {
            last_x = x(m.t_ms);
            let _ = write!(
                s,
                "<line class=tick x1='{last_x:.1}' x2='{last_x:.1}' y1='{:.1}' y2='{:.1}'/>",
                H - 20.0,
                H - 26.0
            );
        }
    }
    let _ = write!(s, "<line class=budget x1='{LEFT}' x2='{}' y1='{:.1}' y2='{:.1}'/><text class='axis budget' x='{}' y='{:.1}' text-anchor=end>budget {}</text>", W - 10.0, y(memory.budget), y(memory.budget), W - 12.0, y(memory.budget) - 4.0, fmt_bytes(memory.budget));
    let step = (timeline.len() / 2000).max(1);
    for (class, f) in
        [("resident", (|s: &Sample| s.rss_anon) as fn(&Sample) -> u64), ("allocated", |s: &Sample| s.allocated)]
    {
        let points: Vec<String> =
            timeline.iter().step_by(step).map(|smp| format!("{:.1},{:.1}", x(smp.t_ms), y(f(smp)))).collect();
        if !points.is_empty() {
            let _ = write!(s, "<polyline class={class} points='{}'/>", points.join(" "));
        }
    }
    let step = (marks.len() / 2000).max(1);
    let points: Vec<String> =
        marks.iter().step_by(step).map(|m| format!("{:.1},{:.1}", x(m.t_ms), y(m.state_bytes))).collect();
    if !points.is_empty() {
        let _ = write!(s, "<polyline class=state points='{}'/>", points.join(" "));
    }
    s.push_str("</svg><p class=legend><span class='key resident'></span>resident <span class='key allocated'></span>allocated <span class='key state'></span>views' state <span class='key budget'></span>budget; ticks: transactions</p>");
    h.push_str(&s);
    h.push_str("<h2>Views</h2><table><thead><tr><th>view</th><th>refresh</th><th>rows</th><th>state</th><th>transactions</th><th>change rows</th><th>busy</th><th>last change</th></tr></thead><tbody>");
    for v in &snapshot.views {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            esc(&v.name),
            esc(&v.refresh),
            v.rows,
            fmt_bytes(v.state_bytes),
            v.transactions,
            v.change_rows,
            secs(v.busy_us / 1000),
            esc(v.last_change.as_deref().unwrap_or("-"))
        );
    }
    h.push_str("</tbody></table><p class=sub>Resident = anonymous RSS (what the budget governs). Views' state = the bytes of operator state the views are charged, after each transaction. All state is held in memory.</p></body></html>\n");
    h
}
