//! The two SVG plots: mean cosine against size on disk and against batched latency, each point
//! labelled with its row's name, the Pareto front drawn as a line through its (filled) points.

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use super::{Error, Fronts, Report, Result, Standing};

/// Pixel size of both plots.
const SIZE: (u32, u32) = (960, 640);
/// Label font size in pixels, and the width of one character estimated for placing labels
/// (there are no font metrics without system fonts).
const LABEL_PX: u32 = 16;
const CHAR_WIDTH_PX: i32 = 7;
/// The x axis is logarithmic when its largest value is at least this many times its smallest.
const LOG_SCALE_FROM: f64 = 4.0;
/// Room kept for the legend (three short entries) in pixels, a little more than it takes.
const LEGEND_PX: (i32, i32) = (160, 80);

const FRONT_COLOUR: RGBColor = RGBColor(31, 119, 180);
const DOMINATED_COLOUR: RGBColor = RGBColor(128, 128, 128);

/// `fidelity_vs_size.svg`: mean cosine (y) against size on disk in MB (x, logarithmic when the
/// sizes span a factor of 4 or more).
///
/// # Errors
/// Anything [`Report::validate`] rejects, and [`Error::Plot`] if plotters fails.
pub fn render_fidelity_vs_size(report: &Report) -> Result<String> {
    report.validate()?;
    let sizes: Vec<f64> = report.rows.iter().map(|row| row.size_bytes as f64 / 1e6).collect();
    let plot = Plot {
        file: "fidelity_vs_size.svg",
        title: "Fidelity vs size on disk",
        x_label: "size on disk (MB)",
        x: sizes,
        fronts: Fronts::of(report).size,
    };
    plot.render(report)
}

/// `fidelity_vs_latency.svg`: mean cosine (y) against batched latency in ms (x, logarithmic when
/// the latencies span a factor of 4 or more).
///
/// # Errors
/// Anything [`Report::validate`] rejects, and [`Error::Plot`] if plotters fails.
pub fn render_fidelity_vs_latency(report: &Report) -> Result<String> {
    report.validate()?;
    let latencies: Vec<f64> = report.rows.iter().map(|row| row.latency_ms.batched).collect();
    let plot = Plot {
        file: "fidelity_vs_latency.svg",
        title: "Fidelity vs latency (batched, one thread)",
        x_label: "batched latency (ms)",
        x: latencies,
        fronts: Fronts::of(report).latency,
    };
    plot.render(report)
}

/// One scatter plot of mean cosine against a positive cost.
struct Plot {
    file: &'static str,
    title: &'static str,
    x_label: &'static str,
    /// The cost of each row, all finite and above zero (the report was validated).
    x: Vec<f64>,
    fronts: Vec<Standing>,
}

impl Plot {
    fn render(&self, report: &Report) -> Result<String> {
        let y: Vec<f64> = report.rows.iter().map(|row| row.mean_cosine).collect();
        let names: Vec<&str> = report.rows.iter().map(|row| row.name.as_str()).collect();
        let (x_low, x_high) = min_max(&self.x);
        let (y_low, y_high) = min_max(&y);
        let y_pad = ((y_high - y_low) * 0.08).max(0.002);
        let y_range = (y_low - y_pad)..(y_high + y_pad);
        let mut svg = String::new();
        let drawn = if x_high >= x_low * LOG_SCALE_FROM {
            let (x_low, x_high) = (x_low / 1.2, x_high * 1.2);
            let x_range = (x_low..x_high).log_scale().with_key_points(log_ticks(x_low, x_high));
            self.draw(&mut svg, x_range, &format!("{}, log scale", self.x_label), y_range, &y, &names)
        } else {
            let x_pad = ((x_high - x_low) * 0.08).max(x_high * 0.05);
            let x_range = (x_low - x_pad).max(0.0)..x_high + x_pad;
            self.draw(&mut svg, x_range, self.x_label, y_range, &y, &names)
        };
        drawn.map_err(|message| Error::Plot { plot: self.file, message })?;
        Ok(svg)
    }

    fn draw<X>(
        &self,
        svg: &mut String,
        x_range: X,
        x_label: &str,
        y_range: std::ops::Range<f64>,
        y: &[f64],
        names: &[&str],
    ) -> Result<(), String>
    where
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let failed = |error: &dyn std::fmt::Display| error.to_string();
        let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .x_label_formatter(&|value| tick_text(*value))
            .y_desc("mean cosine to the baseline")
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| failed(&e))?;

        let points: Vec<(f64, f64)> = self.x.iter().copied().zip(y.iter().copied()).collect();
        let mut front: Vec<(f64, f64)> =
            points.iter().zip(&self.fronts).filter(|(_, standing)| standing.on_front).map(|(p, _)| *p).collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        chart
            .draw_series(LineSeries::new(front.iter().copied(), FRONT_COLOUR.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label("Pareto front")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], FRONT_COLOUR.stroke_width(2)));
        let dominated = points.iter().zip(&self.fronts).filter(|(_, standing)| !standing.on_front);
        chart
            .draw_series(dominated.map(|(point, _)| Circle::new(*point, 5, DOMINATED_COLOUR.stroke_width(2))))
            .map_err(|e| failed(&e))?
            .label("dominated")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, DOMINATED_COLOUR.stroke_width(2)));
        chart
            .draw_series(front.iter().map(|point| Circle::new(*point, 6, FRONT_COLOUR.filled())))
            .map_err(|e| failed(&e))?
            .label("on the front")
            .legend(|(x, y)| Circle::new((x + 10, y), 6, FRONT_COLOUR.filled()));

        let pixels: Vec<(i32, i32)> = points.iter().map(|point| chart.backend_coord(point)).collect();
        let (x_pixels, y_pixels) = chart.plotting_area().get_pixel_range();
        let bounds = Rect { left: x_pixels.start, top: y_pixels.start, right: x_pixels.end, bottom: y_pixels.end };
        let legend = place_legend(&pixels, bounds);
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::Coordinate(legend.left - bounds.left, legend.top - bounds.top))
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| failed(&e))?;

        let style = ("sans-serif", LABEL_PX).into_font().color(&BLACK);
        for (name, position) in names.iter().zip(place_labels(names, &pixels, bounds, legend)) {
            root.draw(&Text::new(name.to_string(), position, style.clone())).map_err(|e| failed(&e))?;
        }
        root.present().map_err(|e| failed(&e))?;
        Ok(())
    }
}

/// Ticks for a logarithmic axis from `low` to `high` (both above zero): 1, 2, 3 and 5 times the
/// powers of ten in the range, or every integer multiple where that gives fewer than three.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let ticks_with = |multiples: &[f64]| -> Vec<f64> {
        let (first, last) = (low.log10().floor() as i32, high.log10().ceil() as i32);
        (first..=last)
            .flat_map(|exponent| {
                // Dividing by an exact power of ten rounds correctly where multiplying by 0.1 does not.
                let scale = 10f64.powi(exponent.abs());
                multiples.iter().map(move |multiple| if exponent < 0 { multiple / scale } else { multiple * scale })
            })
            .filter(|tick| (low..=high).contains(tick))
            .collect()
    };
    let ticks = ticks_with(&[1.0, 2.0, 3.0, 5.0]);
    if ticks.len() >= 3 { ticks } else { ticks_with(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]) }
}

/// A tick label without a needless `.0`, and with as few decimals as tell it apart.
fn tick_text(value: f64) -> String {
    if value == value.round() {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').to_owned()
    }
}

/// The smallest and largest of `values` (finite, non-empty).
fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &v| (low.min(v), high.max(v)))
}

/// A pixel rectangle, `right` and `bottom` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    left: i32,
    top: i32,
    right: i32,
    bottom: i32,
}

impl Rect {
    fn overlaps(&self, other: &Rect) -> bool {
        self.left < other.right && other.left < self.right && self.top < other.bottom && other.top < self.bottom
    }

    fn inside(&self, other: &Rect) -> bool {
        self.left >= other.left && self.right <= other.right && self.top >= other.top && self.bottom <= other.bottom
    }
}

/// The space markers take around each point, for placing labels and the legend.
fn markers(pixels: &[(i32, i32)]) -> Vec<Rect> {
    pixels.iter().map(|&(x, y)| Rect { left: x - 7, top: y - 7, right: x + 7, bottom: y + 7 }).collect()
}

/// Where the legend goes: the first corner of `bounds` (lower right, upper left, lower left,
/// upper right) that covers no point, else the corner covering the fewest.
fn place_legend(pixels: &[(i32, i32)], bounds: Rect) -> Rect {
    let (width, height) = LEGEND_PX;
    let (left, right) = (bounds.left + 5, bounds.right - 5 - width);
    let (top, bottom) = (bounds.top + 5, bounds.bottom - 5 - height);
    let corners = [(right, bottom), (left, top), (left, bottom), (right, top)];
    let markers = markers(pixels);
    corners
        .iter()
        .map(|&(left, top)| Rect { left, top, right: left + width, bottom: top + height })
        .min_by_key(|corner| markers.iter().filter(|marker| marker.overlaps(corner)).count())
        .unwrap_or(Rect { left: right, top: bottom, right: right + width, bottom: bottom + height })
}

/// Top-left corners for the labels of the points at `pixels`: the first of eight spots around
/// its point (right first) that stays inside `bounds` and clears the points, the `legend` and
/// the labels already placed; failing that, the first spot inside `bounds`, else the right of
/// the point.
fn place_labels(names: &[&str], pixels: &[(i32, i32)], bounds: Rect, legend: Rect) -> Vec<(i32, i32)> {
    let height = LABEL_PX as i32 + 2;
    let markers = markers(pixels);
    let mut placed: Vec<Rect> = vec![legend];
    names
        .iter()
        .zip(pixels)
        .map(|(name, &(x, y))| {
            let width = CHAR_WIDTH_PX * name.chars().count() as i32;
            let spots = [
                (x + 9, y - height / 2),
                (x + 9, y - height - 4),
                (x + 9, y + 4),
                (x - 9 - width, y - height / 2),
                (x - 9 - width, y - height - 4),
                (x - 9 - width, y + 4),
                (x - width / 2, y - height - 10),
                (x - width / 2, y + 10),
            ];
            let rect = |(left, top): (i32, i32)| Rect { left, top, right: left + width, bottom: top + height };
            let clear = |spot: &(i32, i32)| {
                let candidate = rect(*spot);
                candidate.inside(&bounds)
                    && !placed.iter().any(|other| other.overlaps(&candidate))
                    && !markers.iter().any(|marker| marker.overlaps(&candidate))
            };
            let spot = spots
                .iter()
                .find(|spot| clear(spot))
                .or_else(|| spots.iter().find(|spot| rect(**spot).inside(&bounds)))
                .copied()
                .unwrap_or(spots[0]);
            placed.push(rect(spot));
            spot
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{report, row, sample};
    use super::*;

    fn check_svg(svg: &str, report: &Report) {
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf\""), "non-finite coordinate in the svg");
        for row in &report.rows {
            assert!(
                svg.contains(&format!(">\n{}\n</text>", row.name)) || svg.contains(&format!(">{}</text>", row.name)),
                "{}",
                row.name
            );
        }
        // Every opened element is closed: self-closing or with its end tag.
        let opened = svg.matches('<').count() - svg.matches("</").count();
        let closed = svg.matches("/>").count() + svg.matches("</").count();
        assert_eq!(opened, closed);
    }

    #[test]
    fn both_plots_label_every_row() {
        let report = sample();
        let size = render_fidelity_vs_size(&report).unwrap();
        check_svg(&size, &report);
        assert!(size.contains("size on disk (MB)"));
        assert!(size.contains("Pareto front"));
        let latency = render_fidelity_vs_latency(&report).unwrap();
        check_svg(&latency, &report);
        assert!(latency.contains("batched latency (ms)"));
    }

    #[test]
    fn log_scale_only_when_the_range_is_wide() {
        // Sample sizes span 12.8 to 88.1 MB (6.9x): log; latencies 300 to 450 ms: linear.
        let report = sample();
        assert!(render_fidelity_vs_size(&report).unwrap().contains("size on disk (MB), log scale"));
        assert!(!render_fidelity_vs_latency(&report).unwrap().contains("log scale"));
    }

    #[test]
    fn front_points_are_filled_and_dominated_ones_hollow() {
        let report = sample();
        let svg = render_fidelity_vs_size(&report).unwrap();
        // Four rows on the size front plus the legend's marker; one dominated plus its legend marker.
        let circles = svg.matches("<circle").count();
        assert_eq!(circles, 7, "{svg}");
        assert_eq!(svg.matches("fill=\"#1F77B4\"").count(), 5, "{svg}");
        assert!(svg.contains("<polyline"), "the front line is missing");
    }

    #[test]
    fn degenerate_ranges_and_one_row() {
        let one = report(vec![row("fp32", 88.0, 10.0, 400.0, 1.0)]);
        check_svg(&render_fidelity_vs_size(&one).unwrap(), &one);
        check_svg(&render_fidelity_vs_latency(&one).unwrap(), &one);
        let same = report(vec![row("fp32", 50.0, 10.0, 400.0, 1.0), row("f16", 50.0, 10.0, 400.0, 1.0)]);
        check_svg(&render_fidelity_vs_size(&same).unwrap(), &same);
    }

    #[test]
    fn rejects_non_finite_input() {
        let mut report = sample();
        report.rows[1].latency_ms.batched = f64::INFINITY;
        assert!(matches!(render_fidelity_vs_latency(&report), Err(Error::NonFiniteField { .. })));
    }

    #[test]
    fn labels_avoid_each_other() {
        let bounds = Rect { left: 0, top: 0, right: 500, bottom: 500 };
        // Three points on top of each other: each label finds its own spot.
        let pixels = [(200, 200), (200, 200), (201, 201)];
        let names = ["alpha", "beta", "gamma"];
        let no_legend = Rect { left: -100, top: -100, right: -90, bottom: -90 };
        let spots = place_labels(&names, &pixels, bounds, no_legend);
        let rects: Vec<Rect> = spots
            .iter()
            .zip(names)
            .map(|(&(left, top), name)| Rect {
                left,
                top,
                right: left + CHAR_WIDTH_PX * name.len() as i32,
                bottom: top + LABEL_PX as i32 + 2,
            })
            .collect();
        for i in 0..rects.len() {
            assert!(rects[i].inside(&bounds));
            for j in 0..i {
                assert!(!rects[i].overlaps(&rects[j]), "{:?} and {:?}", rects[i], rects[j]);
            }
        }
        // A point at the right edge gets its label on the left.
        let spots = place_labels(&["edge"], &[(495, 250)], bounds, no_legend);
        assert!(spots[0].0 < 495 - 9);
        // A legend right of a point sends its label elsewhere.
        let legend = Rect { left: 205, top: 150, right: 400, bottom: 250 };
        let spot = place_labels(&["pushed"], &[(200, 200)], bounds, legend)[0];
        assert!(spot.0 < 200, "{spot:?}");
    }

    #[test]
    fn legend_goes_to_an_empty_corner() {
        let bounds = Rect { left: 0, top: 0, right: 600, bottom: 400 };
        // Points in the lower right and upper left corners: the legend goes lower left.
        let legend = place_legend(&[(590, 390), (10, 10)], bounds);
        assert_eq!((legend.left, legend.bottom), (5, 395));
        assert_eq!(place_legend(&[], bounds).right, 595);
    }

    #[test]
    fn log_ticks_and_their_text() {
        assert_eq!(log_ticks(9.9, 109.0), [10.0, 20.0, 30.0, 50.0, 100.0]);
        assert_eq!(log_ticks(150.0, 700.0), [200.0, 300.0, 500.0]);
        assert_eq!(log_ticks(12.0, 28.0), [20.0]);
        assert_eq!(log_ticks(0.4, 1.5), [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
        assert_eq!((tick_text(20.0), tick_text(0.25), tick_text(0.5)), ("20".into(), "0.25".into(), "0.5".into()));
    }
}
