//! Live memory figures on a progress bar, shared by the commands that show one.

use indicatif::ProgressBar;
use spillway_governor::{fmt_bytes, Governor};
use std::time::Duration;

/// Keeps `bar`'s message at the governor's latest figures (resident memory against the budget,
/// bytes leased and reserved, pressure) until the bar is finished.
pub fn show_memory(bar: &ProgressBar, governor: &Governor) {
    let (bar, gov) = (bar.clone(), governor.clone());
    tokio::spawn(async move {
        while !bar.is_finished() {
            if let Some(s) = gov.timeline().last() {
                bar.set_message(format!(
                    "resident {} of {} · leased {} · reserved {} · pressure {}",
                    fmt_bytes(s.rss_anon),
                    fmt_bytes(gov.budget()),
                    fmt_bytes(gov.leased()),
                    fmt_bytes(gov.reserved()),
                    gov.pressure()
                ));
            }
            bar.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
