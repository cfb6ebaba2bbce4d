//! `--plot FILE.svg`. A single run per policy: one panel per policy, showing
//! the KV memory's composition stacked over time (token states, internal
//! fragmentation, reservation waste, free) and the running batch size on a
//! second axis. A rate sweep: throughput against p90 TTFT, p90 TPOT and p90
//! end-to-end latency, one line per policy. A capacity sweep: prefix hit
//! rate against KV capacity per policy, with the infinite-cache and
//! offline-optimal bounds (the layout of the Mooncake paper's Figure 9).

use std::path::Path;

use pagedkv::sim::{RunResult, RunSummary};
use plotters::prelude::*;

use crate::sim_report::downsample;
use crate::simulate::{CapacitySweep, RatePoint};

/// One color per line, in policy order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Points per panel: enough for the shape, small enough for a light SVG.
const POINTS: usize = 800;
const PANEL_HEIGHT: u32 = 260;

/// Writes the SVG; the error says what failed.
pub fn write_svg(path: &Path, results: &[RunResult]) -> Result<(), String> {
    let height = PANEL_HEIGHT * results.len().max(1) as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((results.len().max(1), 1));
    for (panel, run) in panels.iter().zip(results) {
        draw_panel(panel, run).map_err(|e| format!("drawing {}: {e}", run.summary.policy))?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    run: &RunResult,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let samples = downsample(&run.samples, POINTS);
    let x_max = samples.last().map_or(1.0, |s| s.time).max(1e-6);
    let y2_max = (run.summary.max_running.max(1) as f64 * 1.1).ceil();
    let s = &run.summary;
    let caption = format!(
        "{}: {:.1}% of the KV memory holds token states, mean batch {:.1}, {} preemptions",
        s.policy,
        100.0 * s.pool_token_share,
        s.mean_running,
        s.preemptions
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .right_y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..1f64)
        .map_err(err)?
        .set_secondary_coord(0f64..x_max, 0f64..y2_max);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("simulated time (s)")
        .y_desc("share of KV memory")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("running sequences")
        .draw()
        .map_err(err)?;

    let share = |x: u64, total: u64| if total == 0 { 0.0 } else { x as f64 / total as f64 };
    // Tallest first so that each lower layer is drawn over the one above it.
    type Top = fn(&pagedkv::sim::StepSample) -> u64;
    let layers: [(&str, RGBColor, Top); 4] = [
        ("free", RGBColor(225, 225, 225), |s| s.total_slots),
        ("reservation waste", RGBColor(244, 165, 96), |s| s.reserved_slots),
        ("internal fragmentation", RGBColor(215, 48, 39), |s| {
            s.token_slots + s.internal_fragmentation
        }),
        ("token states", RGBColor(26, 152, 80), |s| s.token_slots),
    ];
    for (label, color, top) in layers {
        chart
            .draw_series(AreaSeries::new(
                samples.iter().map(|s| (s.time, share(top(s), s.total_slots))),
                0.0,
                color.mix(0.9),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_secondary_series(LineSeries::new(
            samples.iter().map(|s| (s.time, s.running as f64)),
            BLACK.stroke_width(1),
        ))
        .map_err(err)?
        .label("running sequences (right axis)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 10, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The rate sweep: x = achieved requests per second, y = p90 latency, one panel per latency.
pub fn write_rates_svg(path: &Path, policies: &[String], points: &[RatePoint]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 3));
    type Metric = fn(&RunSummary) -> f64;
    let metrics: [(&str, Metric); 3] = [
        ("p90 time to first token (s)", |s| s.latency.ttft.p90),
        ("p90 time per output token (ms)", |s| s.latency.tpot.p90 * 1e3),
        ("p90 end-to-end latency (s)", |s| s.latency.e2e.p90),
    ];
    for (panel, (label, metric)) in panels.iter().zip(metrics) {
        let lines: Vec<(String, Vec<(f64, f64)>)> = policies
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let pts = points
                    .iter()
                    .map(|p| (p.runs[i].latency.requests_per_s, metric(&p.runs[i])))
                    .collect();
                (name.clone(), pts)
            })
            .collect();
        draw_lines(
            panel,
            label,
            "throughput (finished requests/s)",
            label,
            &lines,
            None,
            false,
        )
        .map_err(|e| format!("drawing {label}: {e}"))?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The capacity sweep: x = KV capacity in tokens, y = prefix hit rate.
pub fn write_capacities_svg(path: &Path, policies: &[String], sweep: &CapacitySweep) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let tokens = |c: u64| (c * sweep.block_size as u64) as f64;
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = policies
        .iter()
        .zip(&sweep.runs)
        .map(|(name, r)| {
            let pts = sweep
                .capacities
                .iter()
                .zip(r)
                .map(|(&c, s)| (tokens(c), 100.0 * s.prefix_hit_rate))
                .collect();
            (name.clone(), pts)
        })
        .collect();
    lines.push((
        "offline optimum (Belady)".into(),
        sweep
            .capacities
            .iter()
            .zip(&sweep.optimal)
            .map(|(&c, &o)| (tokens(c), 100.0 * o))
            .collect(),
    ));
    let inf = 100.0 * sweep.infinite;
    lines.push((
        "infinite cache".into(),
        sweep.capacities.iter().map(|&c| (tokens(c), inf)).collect(),
    ));
    draw_lines(
        &root,
        "prefix-cache hit rate against KV capacity",
        "KV capacity (tokens)",
        "prompt tokens found cached (%)",
        &lines,
        Some(100.0),
        true,
    )?;
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A tick label: `250`, `12.5k`, `1.3M`.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Lines with markers on one chart; `y_max` fixes the top of the y axis,
/// `log_x` spaces the x axis logarithmically (for geometric sweeps).
fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[(String, Vec<(f64, f64)>)],
    y_max: Option<f64>,
    log_x: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let all = || {
        lines
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let x_max = all().map(|p| p.0).fold(0.0, f64::max).max(1e-9) * 1.05;
    let x_min = (all().map(|p| p.0).fold(f64::INFINITY, f64::min).min(x_max) * 0.95).max(1e-9);
    let y_top = y_max.unwrap_or_else(|| all().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60);
    if log_x {
        let chart = builder
            .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_top)
            .map_err(|e| e.to_string())?;
        finish_lines(chart, x_desc, y_desc, lines)
    } else {
        let chart = builder
            .build_cartesian_2d(if x_min < x_max * 0.3 { 0.0 } else { x_min }..x_max, 0f64..y_top)
            .map_err(|e| e.to_string())?;
        finish_lines(chart, x_desc, y_desc, lines)
    }
}

fn finish_lines<'a, DB: DrawingBackend + 'a, X>(
    mut chart: ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    x_desc: &str,
    y_desc: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Later lines are drawn thinner, so that equal lines stay visible.
        let width = if i == 0 { 4 } else { 2 };
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(width)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    Ok(())
}
