//! PNG bar charts of the benchmark results (plotters, bitmap backend): one group of bars per
//! workload, one bar per configuration, a legend, values above the bars.

use std::{fs, path::Path};

use anyhow::{Context as _, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

/// The font the charts are drawn with (Debian's fonts-dejavu-core, installed by bootstrap).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar: configuration, workload, value.
pub type Bar<'a> = (&'a str, &'a str, f64);

/// Makes the font known to plotters; call once before [`grouped_bars`].
pub fn load_font() -> anyhow::Result<()> {
    let bytes = fs::read(FONT).with_context(|| {
        format!("reading {FONT} (Debian fonts-dejavu-core; `cargo xtask bootstrap`)")
    })?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

const PALETTE: [RGBColor; 16] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
    RGBColor(0xcc, 0xb9, 0x74),
    RGBColor(0x64, 0xb5, 0xcd),
    RGBColor(0x2f, 0x4b, 0x7c),
    RGBColor(0xa0, 0x5d, 0x56),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x2c, 0x6e, 0x3f),
    RGBColor(0x5b, 0x2c, 0x6f),
];

/// Draws `bars` grouped by workload (in `workloads` order) into a PNG at `path`.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    unit: &str,
    workloads: &[&str],
    bars: &[Bar<'_>],
) -> anyhow::Result<()> {
    // Colours follow a configuration's place among all bars, so one configuration has the
    // same colour in every chart.
    let mut every: Vec<&str> = Vec::new();
    let mut configs: Vec<&str> = Vec::new();
    for &(config, workload, _) in bars {
        if !every.contains(&config) {
            every.push(config);
        }
        if workloads.contains(&workload) && !configs.contains(&config) {
            configs.push(config);
        }
    }
    let colour = |config: &str| {
        let index = every.iter().position(|c| *c == config).unwrap_or(0);
        PALETTE[index % PALETTE.len()]
    };
    let max = bars
        .iter()
        .filter(|(_, w, _)| workloads.contains(w))
        .map(|&(_, _, v)| v)
        .fold(0.0, f64::max);
    // Headroom above the tallest bar for the legend, which grows with the configurations.
    let headroom = 1.1 + 0.08 * configs.len() as f64;
    let top = if max > 0.0 { max * headroom } else { 1.0 };
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1100, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let groups = workloads.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..groups, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| short(*v))
            .y_desc(unit)
            .label_style(("sans-serif", 14))
            .draw()?;
        let width = 0.8 / configs.len().max(1) as f64;
        for (c, config) in configs.iter().enumerate() {
            let color = colour(config);
            let mine: Vec<(f64, f64)> = workloads
                .iter()
                .enumerate()
                .filter_map(|(g, w)| {
                    bars.iter()
                        .find(|(bc, bw, _)| bc == config && bw == w)
                        .map(|&(_, _, v)| (g as f64 + 0.1 + width * c as f64, v))
                })
                .collect();
            chart
                .draw_series(mine.iter().map(|&(x, v)| {
                    Rectangle::new([(x, 0.0), (x + width * 0.92, v)], color.filled())
                }))?
                .label(*config)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled())
                });
            chart.draw_series(mine.iter().map(|&(x, v)| {
                Text::new(
                    short(v),
                    (x, v + top * 0.012),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )
            }))?;
        }
        for (g, workload) in workloads.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            let style = ("sans-serif", 15).into_font().color(&BLACK);
            let (w, _) = root.estimate_text_size(workload, &style)?;
            root.draw_text(workload, &style, (px - w as i32 / 2, py + 10))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// A value short enough to sit above a bar.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
