//! The Prometheus text exposition format 0.0.4 of a [`Snapshot`]: a `# HELP` and `# TYPE`
//! line for every metric family, then its samples. Never fails, never panics.

use std::fmt::Write as _;

use super::snapshot::{
    CaptureSnapshot, DeliverySnapshot, EngineCounts, LinkRxSnapshot, LinkSnapshot, LinkTxSnapshot,
    Snapshot, XdpCounter,
};
use crate::counters::Row;

impl Snapshot {
    /// The Prometheus text exposition format 0.0.4: a `# HELP` and `# TYPE` line for every
    /// metric family, then its samples. Per-link series carry `link="<interface>"`, XDP series
    /// `action="<verdict>"`.
    pub(crate) fn render_prometheus(&self) -> String {
        let mut out = Exposition::default();
        out.family(
            "alagg_up",
            "gauge",
            "1 when alagg is running.",
            [(None, "1".to_owned())],
        );
        out.family(
            "alagg_info",
            "gauge",
            "The running instance: TUN device and configuration file.",
            [(
                Some(format!(
                    "tun=\"{}\",config=\"{}\",version=\"{}\"",
                    escape_label(&self.tun),
                    escape_label(&self.config),
                    self.version
                )),
                "1".to_owned(),
            )],
        );
        out.family(
            "alagg_uptime_seconds",
            "gauge",
            "Seconds since alagg came up.",
            [(None, float(self.uptime_secs))],
        );

        let link_label =
            |l: &LinkSnapshot| Some(format!("link=\"{}\"", escape_label(&l.interface)));
        out.family(
            "alagg_link_up",
            "gauge",
            "1 when the link's interface is up with carrier and carries traffic, 0 when down or gone.",
            self.links
                .iter()
                .map(|l| (link_label(l), u64::from(l.status == "up").to_string())),
        );
        // Link health: a state set (1 for the link's condition, 0 for the others), then its
        // measurements; links whose health is not known (an older instance) have none.
        let known = || self.links.iter().filter(|l| !l.health.health.is_empty());
        out.family(
            "alagg_link_health",
            "gauge",
            "1 for the link's condition from the peer's feedback (unknown, up, degraded, down).",
            known().flat_map(|l| {
                ["unknown", "up", "degraded", "down"].map(|state| {
                    (
                        Some(format!(
                            "link=\"{}\",state=\"{state}\"",
                            escape_label(&l.interface)
                        )),
                        u64::from(l.health.health == state).to_string(),
                    )
                })
            }),
        );
        out.family(
            "alagg_link_rtt_seconds",
            "gauge",
            "Smoothed round-trip time of the link (RFC 6298), from the peer's feedback.",
            known().filter_map(|l| l.health.rtt_ms.map(|ms| (link_label(l), float(ms / 1e3)))),
        );
        out.family(
            "alagg_link_loss_ratio",
            "gauge",
            "Share of the frames sent on the link that the peer did not receive, 0 to 1.",
            known().map(|l| (link_label(l), float(l.health.loss_percent / 100.0))),
        );
        out.family(
            "alagg_link_delivery_rate_bits_per_second",
            "gauge",
            "Rate at which the peer received this host's frames on the link lately.",
            known().map(|l| (link_label(l), l.health.delivery_bps.to_string())),
        );
        out.family(
            "alagg_link_downs_total",
            "counter",
            "Times the link went down (silent for 100 ms, or its carrier lost).",
            known().map(|l| (link_label(l), l.health.downs.to_string())),
        );
        for row in LinkTxSnapshot::ROWS {
            out.family(
                &format!("alagg_link_{}_total", row.metric),
                "counter",
                &row.help(),
                self.links
                    .iter()
                    .map(|l| (link_label(l), (row.value)(&l.tx).to_string())),
            );
        }
        for row in LinkRxSnapshot::ROWS {
            out.family(
                &format!("alagg_link_{}_total", row.metric),
                "counter",
                &row.help(),
                self.links
                    .iter()
                    .map(|l| (link_label(l), (row.value)(&l.rx).to_string())),
            );
        }
        out.counters("alagg_", CaptureSnapshot::ROWS, &self.capture);
        out.counters("alagg_", DeliverySnapshot::ROWS, &self.delivery);
        out.counters("alagg_engine_", EngineCounts::ROWS, &self.engine.counts);

        let e = &self.engine;
        if e.hold_count > 0 || !e.hold_histogram.is_empty() {
            let buckets = e
                .hold_histogram
                .iter()
                .map(|&(bound, cumulative)| (float(bound), cumulative))
                .chain([("+Inf".to_owned(), e.hold_count)])
                .map(|(le, n)| (Some(format!("le=\"{le}\"")), n.to_string()));
            out.head(
                "alagg_reorder_hold_seconds",
                "histogram",
                "Time packets were held in the reorder buffer behind a gap.",
            );
            out.samples("alagg_reorder_hold_seconds_bucket", buckets);
            out.samples(
                "alagg_reorder_hold_seconds_sum",
                [(None, float(e.hold_sum_secs))],
            );
            out.samples(
                "alagg_reorder_hold_seconds_count",
                [(None, e.hold_count.to_string())],
            );
        }

        let action_label = |x: &XdpCounter| Some(format!("action=\"{}\"", escape_label(&x.action)));
        if !self.xdp.is_empty() {
            out.family(
                "alagg_xdp_packets_total",
                "counter",
                "Frames by the XDP program's verdict, over all links.",
                self.xdp
                    .iter()
                    .map(|x| (action_label(x), x.packets.to_string())),
            );
            out.family(
                "alagg_xdp_bytes_total",
                "counter",
                "Bytes by the XDP program's verdict, over all links.",
                self.xdp
                    .iter()
                    .map(|x| (action_label(x), x.bytes.to_string())),
            );
        }
        out.text
    }
}

/// Prometheus text being written: families in order, each sample once.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family.
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// Samples `name{labels} value`; `labels` already escaped, without braces.
    fn samples(&mut self, name: &str, samples: impl IntoIterator<Item = (Option<String>, String)>) {
        for (labels, value) in samples {
            match labels {
                Some(labels) => {
                    let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
                }
                None => {
                    let _ = writeln!(self.text, "{name} {value}");
                }
            }
        }
    }

    /// A family of one sample per counter of a set: `{prefix}{metric}_total`.
    fn counters<S>(&mut self, prefix: &str, rows: &[Row<S>], of: &S) {
        for row in rows {
            self.family(
                &format!("{prefix}{}_total", row.metric),
                "counter",
                &row.help(),
                [(None, (row.value)(of).to_string())],
            );
        }
    }

    /// A whole family of one sample name.
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Option<String>, String)>,
    ) {
        self.head(name, kind, help);
        self.samples(name, samples);
    }
}

/// A label value escaped per the exposition format: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text escaped per the exposition format: `\` → `\\`, newline → `\n`.
fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as the exposition format writes it (`+Inf`, `-Inf`, `NaN`, or decimal).
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ops::snapshot::{EngineSnapshot, tests::sample};

    /// Checks one exposition sample line: `name{label="value",...} value`; returns the name.
    fn parse_sample(line: &str) -> String {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic()
                    || c == '_'
                    || c == ':'
                    || (i > 0 && c.is_ascii_digit())),
            "bad metric name in {line:?}"
        );
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            // label="value" pairs separated by commas, values with \\ \" \n escapes.
            let mut chars = labels.char_indices().peekable();
            loop {
                let start = chars.peek().unwrap().0;
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.unwrap_or_else(|| panic!("label without = in {line:?}"));
                let label = &labels[start..eq];
                assert!(
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {label:?} in {line:?}"
                );
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('\\') => {
                            let escaped = chars.next().map(|(_, c)| c);
                            assert!(
                                matches!(escaped, Some('\\' | '"' | 'n')),
                                "bad escape in {line:?}"
                            );
                        }
                        Some('"') => break,
                        Some('\n') | None => panic!("unterminated label value in {line:?}"),
                        Some(_) => {}
                    }
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        rest = &labels[i + 1..];
                        break;
                    }
                    other => panic!("unexpected {other:?} after a label in {line:?}"),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        assert!(
            matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok(),
            "bad value {value:?} in {line:?}"
        );
        name.to_owned()
    }

    /// Parses a whole exposition; returns every sample's metric name.
    fn parse_exposition(text: &str) -> Vec<String> {
        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        let mut helped = BTreeSet::new();
        let mut typed = BTreeSet::new();
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap();
                assert!(helped.insert(name.to_owned()), "two HELP for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    matches!(kind, "counter" | "gauge" | "histogram"),
                    "type {kind}"
                );
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(typed.insert(name.to_owned()), "two TYPE for {name}");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let name = parse_sample(line);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|base| typed.contains(*base))
                    })
                    .unwrap_or(&name);
                assert!(typed.contains(family), "no TYPE for the sample {line:?}");
                names.push(name);
            }
        }
        names
    }

    #[test]
    fn prometheus_parses_and_covers_every_counter() {
        let cases = [
            ("sample", sample()),
            ("empty", Snapshot::default()),
            (
                "no histogram",
                Snapshot {
                    engine: EngineSnapshot::default(),
                    ..sample()
                },
            ),
        ];
        for (case, snapshot) in cases {
            let text = snapshot.render_prometheus();
            let names = parse_exposition(&text);
            for required in [
                "alagg_up",
                "alagg_uptime_seconds",
                "alagg_engine_passed_total",
            ] {
                assert!(
                    names.iter().any(|n| n == required),
                    "{case}: {required} missing"
                );
            }
            for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
                if line.ends_with(" counter") {
                    assert!(
                        line.split(' ').nth(2).unwrap().ends_with("_total"),
                        "{case}: {line}"
                    );
                }
            }
        }
    }

    #[test]
    fn prometheus_values_and_labels() {
        let text = sample().render_prometheus();
        let expected = [
            "alagg_up 1",
            "alagg_uptime_seconds 93784.5",
            "alagg_link_up{link=\"eth1\"} 1",
            "alagg_link_up{link=\"we\\\"ird\\\\name\"} 0",
            "alagg_link_health{link=\"eth1\",state=\"degraded\"} 1",
            "alagg_link_health{link=\"eth1\",state=\"up\"} 0",
            "alagg_link_rtt_seconds{link=\"eth1\"} 0.0125",
            "alagg_link_loss_ratio{link=\"eth1\"} 0.115",
            "alagg_link_delivery_rate_bits_per_second{link=\"eth1\"} 118300000",
            "alagg_link_downs_total{link=\"eth1\"} 2",
            "alagg_link_tx_bytes_total{link=\"eth1\"} 1268000",
            "alagg_link_first_copies_total{link=\"eth1\"} 15",
            "alagg_link_tx_refused_total{link=\"eth1\"} 3",
            "alagg_link_rx_truncated_total{link=\"eth1\"} 2",
            "alagg_link_xsk_rx_ring_full_total{link=\"eth1\"} 0",
            "alagg_engine_passed_total 20",
            "alagg_engine_discarded_total 9",
            "alagg_engine_out_of_order_total 3",
            "alagg_engine_lost_total 2",
            "alagg_engine_reassembled_total 2",
            "alagg_rejected_source_total 7",
            "alagg_xdp_packets_total{action=\"redirected\"} 900",
            "alagg_reorder_hold_seconds_bucket{le=\"0.0001\"} 1",
            "alagg_reorder_hold_seconds_bucket{le=\"0.0005\"} 2",
            "alagg_reorder_hold_seconds_bucket{le=\"1\"} 3",
            "alagg_reorder_hold_seconds_bucket{le=\"+Inf\"} 4",
            "alagg_reorder_hold_seconds_count 4",
            "alagg_reorder_hold_seconds_sum 2.00345",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn escapes_follow_the_exposition_format() {
        let cases = [
            ("plain", "plain"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
            ("\\\"", "\\\\\\\""),
        ];
        for (raw, escaped) in cases {
            assert_eq!(escape_label(raw), escaped, "{raw:?}");
        }
        assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    }
}
