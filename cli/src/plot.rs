//! `--plot FILE.svg`: one panel per policy, showing the KV memory's
//! composition stacked over time (token states, internal fragmentation,
//! reservation waste, free) and the running batch size on a second axis.

use std::path::Path;

use pagedkv::sim::RunResult;
use plotters::prelude::*;

use crate::sim_report::downsample;

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
        "{}: {:.1}% of reserved KV memory holds tokens, mean batch {:.1}, {} preemptions",
        s.policy,
        100.0 * s.token_share,
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
