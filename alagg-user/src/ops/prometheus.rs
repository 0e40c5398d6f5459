//! The metrics of a [`Snapshot`], encoded by the Prometheus project's Rust client
//! (`prometheus-client`): names, types, units, help texts, label escaping and both text formats
//! come from it, in the Prometheus text exposition format 0.0.4 or OpenMetrics 1.0
//! ([`Format`]). Every counter's name and help come from its line in [`crate::counters`].
//!
//! The counters live in atomics that a [`Snapshot`] copies once per scrape, so there is no
//! long-lived registry of live metrics: a [`Registry`] is made per scrape around one
//! [`Collector`] that writes the snapshot's values as counters, gauges, an info metric and a
//! histogram. Counters are named here without `_total`, which the encoder appends (so the
//! samples are `alagg_..._total`, as they always were); a unit (`seconds`, `bytes`, `ratio`) is
//! likewise appended by the encoder and, in OpenMetrics, declared on a `# UNIT` line.

#![deny(unsafe_code)]

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet, prometheus_text, text},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use super::snapshot::{
    CaptureSnapshot, DeliverySnapshot, EngineCounts, LinkRxSnapshot, LinkSnapshot, LinkTxSnapshot,
    Snapshot,
};
use crate::counters::{self, Row};

/// An exposition format a scraper can ask for (`Accept`, [`Format::negotiate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// The Prometheus text exposition format 0.0.4: what a client that names no other gets.
    Prometheus,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`), ending in `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an exposition in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with `Accept: accept` (RFC 9110 section 12.5.1): OpenMetrics
    /// when the client weighs `application/openmetrics-text` at least as high as the Prometheus
    /// text (`text/plain`, `text/*` or `*/*`) and above zero, as Prometheus's own scrapes
    /// (`application/openmetrics-text;version=1.0.0;q=0.5,...,text/plain;version=0.0.4;q=0.3`)
    /// do; otherwise, and without an `Accept`, the Prometheus text.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut openmetrics, mut plain) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, value)| value.trim().parse::<f64>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

impl Snapshot {
    /// The exposition of this snapshot in `format`. Per-link series carry `link="<interface>"`,
    /// XDP series `action="<verdict>"`. Fails only if the encoder reports an error, which writing
    /// into a `String` never does.
    pub(crate) fn into_metrics(self, format: Format) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotMetrics(self)));
        let mut out = String::new();
        match format {
            Format::Prometheus => prometheus_text::encode(&mut out, &registry)?,
            Format::OpenMetrics => text::encode(&mut out, &registry)?,
        }
        Ok(out)
    }
}

/// The labels of a sample that has none.
const NO_LABELS: [(&str, &str); 0] = [];

/// A [`Snapshot`] as a `prometheus-client` [`Collector`]: encodes its values on each scrape.
#[derive(Debug)]
struct SnapshotMetrics(Snapshot);

impl Collector for SnapshotMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.0;
        let mut out = Families(&mut encoder);
        out.gauge(
            "alagg_up",
            "1 when alagg is running.",
            None,
            [(NO_LABELS, 1_u64)],
        )?;
        out.0
            .encode_descriptor(
                "alagg",
                "The running instance: TUN device and configuration file.",
                None,
                MetricType::Info,
            )?
            .encode_info(&[
                ("tun", s.tun.clone()),
                ("config", s.config.clone()),
                ("version", s.version.to_string()),
            ])?;
        out.gauge(
            "alagg_uptime",
            "Seconds since alagg came up.",
            Some(Unit::Seconds),
            [(NO_LABELS, s.uptime_secs)],
        )?;
        out.gauge(
            "alagg_reorder_hold_now",
            "How long a packet waits behind a gap now: the links' delay spread and jitter plus a margin, at least 5 ms, at most protocol.hold_ms.",
            Some(Unit::Seconds),
            [(NO_LABELS, s.engine.hold_now_secs)],
        )?;

        let link = |l: &LinkSnapshot| [("link", l.interface.clone())];
        out.gauge(
            "alagg_link_up",
            "1 when the link's interface is up with carrier and carries traffic, 0 when down or gone.",
            None,
            s.links
                .iter()
                .map(|l| (link(l), u64::from(l.status == "up"))),
        )?;
        // Link health: a state set (1 for the link's condition, 0 for the others), then its
        // measurements; links whose health is not known (an older instance) have none.
        let known = || s.links.iter().filter(|l| !l.health.health.is_empty());
        out.gauge(
            "alagg_link_health",
            "1 for the link's condition from the peer's feedback (unknown, up, degraded, down).",
            None,
            known().flat_map(|l| {
                ["unknown", "up", "degraded", "down"].map(|state| {
                    (
                        vec![("link", l.interface.clone()), ("state", state.to_owned())],
                        u64::from(l.health.health == state),
                    )
                })
            }),
        )?;
        out.gauge(
            "alagg_link_rtt",
            "Smoothed round-trip time of the link (RFC 6298), from the peer's feedback.",
            Some(Unit::Seconds),
            known().filter_map(|l| l.health.rtt_ms.map(|ms| (link(l), ms / 1e3))),
        )?;
        out.gauge(
            "alagg_link_loss",
            "Share of the frames sent on the link that the peer did not receive, 0 to 1.",
            Some(Unit::Other("ratio".to_owned())),
            known().map(|l| (link(l), l.health.loss_percent / 100.0)),
        )?;
        out.gauge(
            "alagg_link_delivery_rate_bits_per_second",
            "Rate at which the peer received this host's frames on the link lately.",
            None,
            known().map(|l| (link(l), l.health.delivery_bps)),
        )?;
        out.counter(
            "alagg_link_downs",
            "Times the link went down (silent for 100 ms, or its carrier lost).",
            None,
            known().map(|l| (link(l), l.health.downs)),
        )?;
        for row in LinkTxSnapshot::ROWS {
            out.row("alagg_link_", row, s.links.iter().map(|l| (link(l), &l.tx)))?;
        }
        for row in LinkRxSnapshot::ROWS {
            out.row("alagg_link_", row, s.links.iter().map(|l| (link(l), &l.rx)))?;
        }
        for row in CaptureSnapshot::ROWS {
            out.row("alagg_", row, [(NO_LABELS, &s.capture)])?;
        }
        for row in DeliverySnapshot::ROWS {
            out.row("alagg_", row, [(NO_LABELS, &s.delivery)])?;
        }
        for row in EngineCounts::ROWS {
            out.row("alagg_engine_", row, [(NO_LABELS, &s.engine.counts)])?;
        }

        let e = &s.engine;
        if e.hold_count > 0 || !e.hold_histogram.is_empty() {
            // The snapshot's buckets are cumulative; the encoder takes each bucket's own count.
            let mut below = 0;
            let mut buckets: Vec<(f64, u64)> = e
                .hold_histogram
                .iter()
                .map(|&(bound, cumulative)| {
                    let own = cumulative.saturating_sub(below);
                    below = below.max(cumulative);
                    (bound, own)
                })
                .collect();
            buckets.push((f64::INFINITY, e.hold_count.saturating_sub(below)));
            out.0
                .encode_descriptor(
                    "alagg_reorder_hold",
                    "Time packets were held in the reorder buffer behind a gap.",
                    Some(&Unit::Seconds),
                    MetricType::Histogram,
                )?
                .encode_histogram::<NoLabelSet>(e.hold_sum_secs, e.hold_count, &buckets, None)?;
        }

        if !s.xdp.is_empty() {
            let action = |action: &str| [("action", action.to_owned())];
            out.counter(
                "alagg_xdp_packets",
                "Frames by the XDP program's verdict, over all links.",
                None,
                s.xdp.iter().map(|x| (action(&x.action), x.packets)),
            )?;
            out.counter(
                "alagg_xdp",
                "Bytes by the XDP program's verdict, over all links.",
                Some(Unit::Bytes),
                s.xdp.iter().map(|x| (action(&x.action), x.bytes)),
            )?;
        }
        Ok(())
    }
}

/// Metric families being encoded, each with its descriptor (`# HELP`, `# TYPE`, `# UNIT`) and
/// then its samples.
struct Families<'e, 'a>(&'e mut DescriptorEncoder<'a>);

impl Families<'_, '_> {
    /// A gauge family: one sample per label set.
    fn gauge<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        for (labels, value) in samples {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    /// A counter family (`name` without `_total`): one sample per label set.
    fn counter<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut family =
            self.0
                .encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
        for (labels, value) in samples {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    /// The counter family of one row of a counter set, `{prefix}{metric}_total`, with one
    /// sample per (labels, set). A count of bytes (`…_bytes`) carries the unit `bytes`.
    fn row<'s, L: EncodeLabelSet, S: 's>(
        &mut self,
        prefix: &str,
        row: &Row<S>,
        sets: impl IntoIterator<Item = (L, &'s S)>,
    ) -> fmt::Result {
        let (metric, unit) = match row.metric.strip_suffix("_bytes") {
            Some(base) if row.unit == counters::Unit::Bytes => (base, Some(Unit::Bytes)),
            _ => (row.metric, None),
        };
        self.counter(
            &format!("{prefix}{metric}"),
            &row.help(),
            unit,
            sets.into_iter()
                .map(|(labels, set)| (labels, (row.value)(set))),
        )
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
            let text = snapshot.into_metrics(Format::Prometheus).unwrap();
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
        let text = sample().into_metrics(Format::Prometheus).unwrap();
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

    /// The sample names of an exposition (without labels), in order, each once.
    fn sample_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l[..l.find(['{', ' ']).unwrap()].to_owned())
            .collect()
    }

    #[test]
    fn openmetrics_has_the_same_samples_with_families_units_and_eof() {
        let prometheus = sample().into_metrics(Format::Prometheus).unwrap();
        let openmetrics = sample().into_metrics(Format::OpenMetrics).unwrap();
        assert!(openmetrics.ends_with("\n# EOF\n"), "{openmetrics}");
        assert!(!prometheus.contains("# EOF"), "{prometheus}");
        for text in [&prometheus, &openmetrics] {
            assert!(!text.contains("_total_total"), "{text}");
            assert!(!text.contains("_seconds_seconds"), "{text}");
            assert!(!text.contains("_bytes_bytes"), "{text}");
        }
        assert_eq!(sample_names(&prometheus), sample_names(&openmetrics));
        // OpenMetrics names a counter's family without `_total`, its samples with it.
        let counters: Vec<&str> = openmetrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        assert!(counters.len() > 60, "{counters:?}");
        for family in counters {
            assert!(!family.ends_with("_total"), "{family}");
            assert!(
                openmetrics
                    .lines()
                    .any(|l| l.starts_with(&format!("{family}_total"))),
                "no sample of {family}"
            );
        }
        for line in [
            "# TYPE alagg info",
            "# UNIT alagg_uptime_seconds seconds",
            "# UNIT alagg_link_loss_ratio ratio",
            "# TYPE alagg_link_tx_bytes counter",
            "# UNIT alagg_link_tx_bytes bytes",
            "# TYPE alagg_reorder_hold_seconds histogram",
            "alagg_info{tun=\"alagg0\",config=\"/etc/alagg/site-a.toml\",version=\"1\"} 1",
            "alagg_link_tx_bytes_total{link=\"eth1\"} 1268000",
            "alagg_link_up{link=\"we\\\"ird\\\\name\"} 0",
            "alagg_reorder_hold_seconds_bucket{le=\"+Inf\"} 4",
            "alagg_reorder_hold_seconds_count 4",
        ] {
            assert!(
                openmetrics.lines().any(|l| l == line),
                "{line:?} missing in\n{openmetrics}"
            );
        }
    }

    #[test]
    fn accept_picks_the_format() {
        let cases = [
            (None, Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            // What Prometheus 2.x and 3.x send by default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,\
                     text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                Format::Prometheus,
            ),
            (Some("Application/OpenMetrics-Text;Q=0"), Format::Prometheus),
            (
                Some("application/openmetrics-text;q=junk"),
                Format::Prometheus,
            ),
            (Some("application/json"), Format::Prometheus),
        ];
        for (accept, format) in cases {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }
}
