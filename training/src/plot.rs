//! What the SVG plots (`eval`'s cost–quality plane, `capacity`'s cost by provisioned size) share:
//! the canvas, errors that name the file, lines with legend entries and labelled points.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Result, TrainingError};

/// A chart on a [`Canvas`], with `f64` axes.
pub(crate) type Chart<'c, 'p> =
    ChartContext<'c, SVGBackend<'p>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What [`labelled_point`] draws: a dot and its label.
pub(crate) type LabelledPoint<DB> =
    ComposedElement<(f64, f64), DB, Circle<(i32, i32), i32>, Text<'static, (i32, i32), String>>;

/// How a line is drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stroke {
    Solid,
    Dashed,
}

/// Where a point's label goes, relative to the point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LabelSide {
    /// Left of the point (for points near the right edge, so labels stay inside the plot).
    pub left: bool,
    /// Above the point; else below.
    pub above: bool,
}

/// A 1000 × 700 white SVG being drawn to `path`.
pub(crate) struct Canvas<'p> {
    path: &'p Path,
    root: DrawingArea<SVGBackend<'p>, Shift>,
}

impl<'p> Canvas<'p> {
    /// Starts the drawing.
    pub(crate) fn new(path: &'p Path) -> Result<Self> {
        let canvas = Canvas {
            path,
            root: SVGBackend::new(path, (1000, 700)).into_drawing_area(),
        };
        canvas.root.fill(&WHITE).map_err(|e| canvas.error(e))?;
        Ok(canvas)
    }

    /// A plotting error, naming the file.
    pub(crate) fn error(&self, error: impl fmt::Display) -> TrainingError {
        TrainingError::Plot {
            path: self.path.to_owned(),
            message: error.to_string(),
        }
    }

    /// The chart: caption, margins and the axes' ranges; `y_label_width` leaves room for the y
    /// axis' tick labels.
    pub(crate) fn chart(
        &self,
        caption: &str,
        y_label_width: u32,
        x: Range<f64>,
        y: Range<f64>,
    ) -> Result<Chart<'_, 'p>> {
        ChartBuilder::on(&self.root)
            .caption(caption, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(y_label_width)
            .build_cartesian_2d(x, y)
            .map_err(|e| self.error(e))
    }

    /// Draws a line through `points` (two pixels wide) with its legend entry.
    pub(crate) fn line(
        &self,
        chart: &mut Chart<'_, 'p>,
        points: Vec<(f64, f64)>,
        colour: RGBColor,
        stroke: Stroke,
        label: String,
    ) -> Result<()> {
        let style = colour.stroke_width(2);
        let drawn = match stroke {
            Stroke::Solid => chart.draw_series(LineSeries::new(points, style)),
            Stroke::Dashed => chart.draw_series(DashedLineSeries::new(points, 6, 4, style)),
        };
        drawn
            .map_err(|e| self.error(e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        Ok(())
    }

    /// Draws the legend at `position` and writes the file.
    pub(crate) fn finish<'c>(
        &'c self,
        chart: &mut Chart<'c, 'p>,
        position: SeriesLabelPosition,
    ) -> Result<()> {
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| self.error(e))?;
        self.root.present().map_err(|e| self.error(e))
    }
}

/// A filled dot of `radius` pixels at `at`, with `label` beside it in `colour`.
pub(crate) fn labelled_point<DB: DrawingBackend>(
    at: (f64, f64),
    label: String,
    colour: RGBColor,
    radius: i32,
    side: LabelSide,
) -> LabelledPoint<DB> {
    let (horizontal, dx) = if side.left {
        (HPos::Right, -6)
    } else {
        (HPos::Left, 6)
    };
    let (vertical, dy) = if side.above {
        (VPos::Bottom, -4)
    } else {
        (VPos::Top, 4)
    };
    let style = ("sans-serif", 13)
        .into_font()
        .color(&colour)
        .pos(Pos::new(horizontal, vertical));
    EmptyElement::at(at)
        + Circle::new((0, 0), radius, colour.filled())
        + Text::new(label, (dx, dy), style)
}
