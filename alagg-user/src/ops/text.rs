//! The `alagg status` text of a [`Snapshot`], in the manner of `wg show`: a header, a block
//! per link, then the engine, capture, delivery and XDP sections. Never fails, never panics.

use std::fmt::Write as _;

use super::snapshot::{
    CaptureSnapshot, DeliverySnapshot, EngineCounts, LinkRxSnapshot, LinkSnapshot, LinkTxSnapshot,
    Snapshot,
};
use crate::counters::{Row, Unit};

impl Snapshot {
    /// The `alagg status` text: a header, a block per link, then the engine, capture, delivery
    /// and XDP sections. Plain text, labels aligned within each block.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let header = [
            ("pid", self.pid.to_string()),
            ("uptime", human_duration(self.uptime_secs)),
            ("config", self.config.clone()),
        ];
        block(&mut out, &format!("interface: {}", self.tun), &header);

        let total_first: u64 = self
            .links
            .iter()
            .map(|l| l.rx.first)
            .fold(0, u64::wrapping_add);
        let total_sent: u64 = self
            .links
            .iter()
            .map(|l| l.tx.tx_bytes)
            .fold(0, u64::wrapping_add);
        for link in &self.links {
            let mut rows = vec![("status".to_owned(), link.status.clone())];
            rows.extend(health_rows(link, total_sent));
            rows.extend(rows_of(LinkTxSnapshot::ROWS, &link.tx));
            rows.extend(rows_of(LinkRxSnapshot::ROWS, &link.rx));
            if let Some(first) = rows.last_mut() {
                // The first-copies row, last: with the link's share of them.
                first.1 = format!("{} ({})", share(link.rx.first, total_first), first.1);
            }
            block(&mut out, &format!("link: {}", link.interface), &rows);
        }

        let e = &self.engine;
        let mut engine = rows_of(EngineCounts::ROWS, &e.counts);
        if e.hold_now_secs > 0.0 {
            engine.push(("reorder hold now".to_owned(), human_secs(e.hold_now_secs)));
        }
        if e.hold_count > 0 || !e.hold_histogram.is_empty() {
            let mean = if e.hold_count == 0 {
                0.0
            } else {
                e.hold_sum_secs / e.hold_count as f64
            };
            engine.push((
                "reorder holds".to_owned(),
                format!("{} (mean {})", e.hold_count, human_secs(mean)),
            ));
            // Per bucket (not cumulative), empty buckets left out.
            let mut below = 0u64;
            for &(bound, cumulative) in &e.hold_histogram {
                let count = cumulative.saturating_sub(below);
                if count > 0 {
                    engine.push((format!("  <= {}", human_secs(bound)), count.to_string()));
                }
                below = cumulative;
            }
            let above = e.hold_count.saturating_sub(below);
            if let Some(&(bound, _)) = e.hold_histogram.last().filter(|_| above > 0) {
                engine.push((format!("  > {}", human_secs(bound)), above.to_string()));
            }
        }
        block(&mut out, "engine (IEEE 802.1CB sequence recovery)", &engine);
        let capture = rows_of(CaptureSnapshot::ROWS, &self.capture);
        block(&mut out, "capture (NFQUEUE)", &capture);
        let delivery = rows_of(DeliverySnapshot::ROWS, &self.delivery);
        block(&mut out, "delivery (TUN)", &delivery);

        if !self.xdp.is_empty() {
            let xdp: Vec<(&str, String)> = self
                .xdp
                .iter()
                .map(|x| {
                    (
                        x.action.as_str(),
                        format!("{} in {} frames", human_bytes(x.bytes), x.packets),
                    )
                })
                .collect();
            block(&mut out, "xdp", &xdp);
        }
        // `block` separates blocks with a blank line; none after the last.
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }
}

impl Snapshot {
    /// The line `alagg up` prints when it stops: `summary: name=value ...` for every capture,
    /// delivery and engine counter (at zero too, so a script can rely on each name), and per
    /// link `links=<interface>:tx_frames=..,...;<interface>:...` with every link counter; names
    /// as in `alagg status --json`.
    pub(crate) fn render_summary(&self) -> String {
        fn pairs<S>(rows: &[Row<S>], of: &S) -> Vec<String> {
            rows.iter()
                .map(|row| format!("{}={}", row.name, (row.value)(of)))
                .collect()
        }
        let mut words = pairs(CaptureSnapshot::ROWS, &self.capture);
        words.extend(pairs(DeliverySnapshot::ROWS, &self.delivery));
        words.extend(pairs(EngineCounts::ROWS, &self.engine.counts));
        let links: Vec<String> = self
            .links
            .iter()
            .map(|l| {
                let mut counts = pairs(LinkTxSnapshot::ROWS, &l.tx);
                counts.extend(pairs(LinkRxSnapshot::ROWS, &l.rx));
                format!("{}:{}", l.interface, counts.join(","))
            })
            .collect();
        format!("summary: {} links={}", words.join(" "), links.join(";"))
    }
}

/// A block's rows for a counter set: each counter's label and value (bytes in binary units).
fn rows_of<S>(rows: &[Row<S>], of: &S) -> Vec<(String, String)> {
    rows.iter()
        .map(|row| {
            let value = (row.value)(of);
            let shown = match row.unit {
                Unit::Bytes => human_bytes(value),
                Unit::Packets => format!("{value} packets"),
                Unit::Frames => format!("{value} frames"),
                Unit::Events => value.to_string(),
            };
            (row.label.to_owned(), shown)
        })
        .collect()
}

/// Appends a block: a title line, then `  label: value` rows with values aligned, then a blank
/// line.
fn block(out: &mut String, title: &str, rows: &[(impl AsRef<str>, String)]) {
    // Widths in characters, as `format!` pads (`µ` is one).
    let width = rows
        .iter()
        .map(|(label, _)| label.as_ref().chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let _ = writeln!(out, "{title}");
    for (label, value) in rows {
        let label = format!("{}:", label.as_ref());
        let _ = writeln!(out, "  {label:<width$} {value}");
    }
    out.push('\n');
}

/// A link's health rows: condition, round-trip time, loss, delivery rate, share of the bytes
/// sent (of `total_sent` over all links).
fn health_rows(link: &LinkSnapshot, total_sent: u64) -> Vec<(String, String)> {
    let h = &link.health;
    if h.health.is_empty() {
        // An instance from before link health.
        return Vec::new();
    }
    let downs = match h.downs {
        0 => String::new(),
        1 => ", down once so far".to_owned(),
        n => format!(", down {n} times so far"),
    };
    let rtt = match (h.rtt_ms, h.min_rtt_ms) {
        (Some(rtt), Some(min)) => {
            format!("{} (min {})", human_secs(rtt / 1e3), human_secs(min / 1e3))
        }
        (Some(rtt), None) => human_secs(rtt / 1e3),
        _ => "-".to_owned(),
    };
    vec![
        ("health".to_owned(), format!("{}{downs}", h.health)),
        ("rtt".to_owned(), rtt),
        ("loss".to_owned(), format!("{}%", trim(h.loss_percent))),
        ("delivery rate".to_owned(), human_rate(h.delivery_bps)),
        (
            "share of bytes sent".to_owned(),
            share(link.tx.tx_bytes, total_sent),
        ),
    ]
}

/// Bits per second with decimal units: `950 bit/s`, `118.3 Mbit/s`.
fn human_rate(bps: u64) -> String {
    const UNITS: [&str; 4] = ["kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    if bps < 1000 {
        return format!("{bps} bit/s");
    }
    let mut value = bps as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!(
        "{value:.1} {}",
        UNITS.get(unit).copied().unwrap_or("Tbit/s")
    )
}

/// Bytes with binary units, like `wg show`: `512 B`, `1.21 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS.get(unit).copied().unwrap_or("EiB"))
}

/// A duration like `wg show`: `1 day, 2 hours, 3 minutes, 4 seconds`.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 1.0 {
        return "0 seconds".to_owned();
    }
    let total = secs as u64;
    let parts = [
        (total / 86_400, "day"),
        (total / 3_600 % 24, "hour"),
        (total / 60 % 60, "minute"),
        (total % 60, "second"),
    ];
    let words: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|&(n, unit)| format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
        .collect();
    words.join(", ")
}

/// A short duration: `250 µs`, `2.5 ms`, `1 s`.
fn human_secs(secs: f64) -> String {
    if secs < 0.001 {
        format!("{} µs", trim(secs * 1e6))
    } else if secs < 1.0 {
        format!("{} ms", trim(secs * 1e3))
    } else {
        format!("{} s", trim(secs))
    }
}

/// At most two decimals, trailing zeros dropped.
fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `part` as a percentage of `total` with one decimal, or `-` when `total` is zero.
fn share(part: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ops::snapshot::{LinkSnapshot, tests::sample};

    #[test]
    fn text_shows_every_link_and_its_share_of_first_copies() {
        let text = sample().render_text();
        for expected in [
            "interface: alagg0",
            "pid:",
            "1 day, 2 hours, 3 minutes, 4 seconds",
            "/etc/alagg/site-a.toml",
            "link: eth1",
            "link: we\"ird\\name",
            "gone",
            "discarded duplicates:",
            "capture (NFQUEUE)",
            "delivery (TUN)",
            "rejected source:",
            "reorder holds:",
            "  <= 100 µs:",
            "  > 1 s:",
            "redirected:",
            "degraded, down 2 times so far",
            "12.5 ms (min 10.25 ms)",
            "11.5%",
            "118.3 Mbit/s",
            "share of bytes sent:",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        // eth1 sent every byte, the other link none.
        assert!(text.contains("100.0%"), "{text}");
        // Counters read as their unit says, whatever the padding.
        let values: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(label, value)| (label, value.trim()))
            .collect();
        for row in [
            ("first copies", "75.0% (15 packets)"),
            ("first copies", "25.0% (5 packets)"),
            ("bytes sent", "1.21 MiB"),
            ("frames sent", "1000 frames"),
            ("bytes received", "512 B"),
            ("captured bytes", "19.53 KiB"),
            ("captured", "20 packets"),
            ("queue errors", "3"),
            ("lost (given up)", "2"),
            ("send drops", "3 frames"),
            ("refused by device", "3 frames"),
            ("truncated frames", "2 frames"),
        ] {
            assert!(values.contains(&row), "{row:?} missing in\n{text}");
        }
        // Values line up within a block.
        let link: Vec<&str> = text
            .split("\n\n")
            .find(|b| b.starts_with("link: eth1"))
            .unwrap()
            .lines()
            .skip(1)
            .collect();
        let columns: BTreeSet<usize> = link
            .iter()
            .map(|l| {
                l.find(':').unwrap() + l[l.find(':').unwrap() + 1..].find(|c| c != ' ').unwrap()
            })
            .collect();
        assert_eq!(columns.len(), 1, "unaligned:\n{}", link.join("\n"));
        assert!(!text.ends_with("\n\n"));
    }

    #[test]
    fn text_without_first_copies_shows_no_share() {
        let snapshot = Snapshot {
            links: vec![LinkSnapshot {
                interface: "eth9".into(),
                status: "down".into(),
                ..LinkSnapshot::default()
            }],
            ..Snapshot::default()
        };
        let text = snapshot.render_text();
        assert!(text.contains("- (0 packets)"), "{text}");
        assert!(text.contains("peer restarts:"), "{text}");
        assert!(!text.contains("reorder holds"), "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }

    #[test]
    fn human_units() {
        let bytes = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (1_268_000, "1.21 MiB"),
            (u64::MAX, "16.00 EiB"),
        ];
        for (value, text) in bytes {
            assert_eq!(human_bytes(value), text);
        }
        let durations = [
            (0.0, "0 seconds"),
            (f64::NAN, "0 seconds"),
            (1.0, "1 second"),
            (61.0, "1 minute, 1 second"),
            (7_200.0, "2 hours"),
        ];
        for (value, text) in durations {
            assert_eq!(human_duration(value), text);
        }
        assert_eq!(human_secs(0.00025), "250 µs");
        assert_eq!(human_secs(0.0025), "2.5 ms");
    }

    #[test]
    fn the_summary_names_every_counter_even_at_zero() {
        let summary = sample().render_summary();
        for expected in [
            "summary: captured=20 captured_bytes=20000 dropped=1 batches=4 overruns=2 errors=3 ",
            " delivered=20 ",
            " rejected_source=7 ",
            " coalesced=0 ",
            " discarded=9 ",
            " lost=2 ",
            " links=eth1:tx_frames=1000,tx_bytes=1268000,tx_dropped=3,",
            ",tx_refused=3,tx_send_errors=1,tx_resent=0,rx_frames=900,",
            ",rx_truncated=2,",
            ",first=15;we\"ird\\name:",
        ] {
            assert!(
                summary.contains(expected),
                "{expected:?} missing in {summary}"
            );
        }
        assert!(
            summary.contains(" rogue=0 "),
            "zero engine counters are named too: {summary}"
        );
        assert!(!summary.contains('\n'));
    }
}
