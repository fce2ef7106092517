//! The pieces of the HTML pages that show a memory timeline (a run's report, a `views serve`
//! session's): the page's CSS, the chart's size and axes, summary cards, text escaping. One
//! self-contained page each: inline SVG and CSS, no scripts, nothing fetched.

use crate::fmt_bytes;
use std::fmt::Write;

/// The chart's width, in SVG units.
pub const W: f64 = 1000.0;
/// The chart's height, in SVG units.
pub const H: f64 = 300.0;
/// Where the plot starts, right of the byte labels.
pub const LEFT: f64 = 70.0;

/// The byte grid (five lines, labelled) and the time axis (six labels) of a memory chart.
pub fn axes(s: &mut String, ymax: f64, end_ms: f64, x: &dyn Fn(u64) -> f64, y: &dyn Fn(u64) -> f64) {
    for k in 0..=4 {
        let b = (ymax * k as f64 / 4.0) as u64;
        let _ = write!(
            s,
            "<line class=grid x1='{LEFT}' x2='{}' y1='{:.1}' y2='{:.1}'/><text class=axis x='{}' y='{:.1}' text-anchor=end>{}</text>",
            W - 10.0,
            y(b),
            y(b),
            LEFT - 4.0,
            y(b) + 4.0,
            fmt_bytes(b)
        );
    }
    for k in 0..=5 {
        let t = (end_ms * k as f64 / 5.0) as u64;
        let _ = write!(s, "<text class=axis x='{:.1}' y='{}' text-anchor=middle>{}</text>", x(t), H - 4.0, secs(t));
    }
}

/// A summary card: a label over a value.
pub fn card(label: &str, value: &str) -> String {
    format!("<div class=card><div class=label>{}</div><div class=value>{}</div></div>", esc(label), esc(value))
}

/// A duration in milliseconds as seconds (`1.25s`, `12.5s`).
pub fn secs(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&#39;").replace('"', "&quot;")
}

/// The pages' style sheet.
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1060px;color:#222}\
h1{font-size:20px;margin:0}h2{font-size:16px;margin:24px 0 8px}.sub{color:#666}\
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:140px}\
.label{color:#666;font-size:12px}.value{font-size:16px;font-weight:600}\
svg{width:100%;height:auto;display:block}.grid{stroke:#eee}.axis{font-size:11px;fill:#666}\
line.budget{stroke:#d62728;stroke-width:1.5;stroke-dasharray:6 4}line.leasable{stroke:#999;stroke-dasharray:3 3}text.budget{fill:#d62728}text.leasable{fill:#999}.prep{fill:#f4f4f4}\
.resident{fill:none;stroke:#1f4e99;stroke-width:1.8}.allocated{fill:none;stroke:#f28e2b;stroke-width:1.2}\
.band{opacity:.22}.wait{fill:#ddd}.lane{font-size:12px}.skip{fill:#999}\
.legend{font-size:12px;color:#444}.key{display:inline-block;width:14px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}\
.state{fill:none;stroke:#59a14f;stroke-width:1.5}.key.state{background:#59a14f}.tick{stroke:#888}\
.key.resident{background:#1f4e99}.key.allocated{background:#f28e2b}.key.budget{background:#d62728}.key.leasable{background:#999}.key.band{background:#4e79a7;opacity:.3;height:10px}\
table{border-collapse:collapse;width:100%;margin-top:12px;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}\
td.n{text-align:right;white-space:nowrap}.note{color:#555;max-width:300px;overflow-wrap:anywhere}.ok{color:#2a7d2a}.err{color:#c62828}";
