//! Reading a shapes-world image's attributes off its pixels, and scoring an image against the
//! caption it was generated from.
//!
//! [`read_objects`] finds the objects of an image: it estimates the background from the image
//! border, seeds objects where pixels are far from it, keeps the connected components that are
//! more than specks, and grows each by a couple of pixels to take in its antialiased (or
//! blurred) rim. For each object it then
//!
//! - names the colour by *unmixing*: every pixel is modelled as `background + c · (colour −
//!   background)` with coverage `c ∈ [0, 1]`, and the palette colour leaving the least residual
//!   wins, so half-covered rim pixels count for the right colour instead of dragging a mean
//!   towards the background;
//! - measures the coverage map for that colour, whose sum is the object's area and whose
//!   centroid is its centre (both unchanged by blur, and the renderer puts every shape's
//!   centroid at its centre), giving the grid cell;
//! - names the shape by template matching: for each shape, the size that gives the measured
//!   area, rendered at the measured centre with the renderer's own footprints, under a range of
//!   Gaussian blurs, and scaled to fit by least squares; the shape with the smallest relative
//!   residual wins. Shapes are drawn upright and unrotated, which the templates use. The fitted
//!   size gives the size class.
//!
//! Limits: small objects at 32 px are 6–8 px across; a blur of σ ≥ 1 px on top of the
//! downscale leaves little of their corners, and squares and stars start to read as circles
//! (see the `degrades_gracefully` test for figures). Colour and position hold up far longer.
//!
//! [`parse_caption`] reads a caption of the generator's grammar (see
//! `unclip_data_tools::shapes::caption`) back
//! into a [`CaptionSpec`], and [`score`] compares the two.

use image::RgbImage;
use unclip_data_tools::shapes::{Color, Position, Relation, Shape, SizeClass};

mod parse;
mod read;
#[cfg(test)]
mod tests;

pub use parse::parse_caption;
pub use read::read_objects;

/// One object found in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectReading {
    pub color: Color,
    pub shape: Shape,
    /// Grid cell of the centre.
    pub position: Position,
    /// Size class from the fitted bounding-circle diameter.
    pub size: SizeClass,
    /// Coverage-weighted centroid, pixels from the top-left corner (pixel centres at +0.5).
    pub center: (f64, f64),
    /// Coverage-weighted area in pixels.
    pub area: f64,
    /// The fitted bounding-circle diameter in pixels (the scene's `size_px`).
    pub diameter: f64,
    /// Mean colour of the object's most covered pixels.
    pub mean_rgb: [f64; 3],
    /// Residual of the best shape template relative to the object's energy (0 = exact).
    pub shape_error: f64,
    /// Residual of the best shape template minus that of the runner-up's, relative (≤ 0;
    /// closer to 0 = less sure).
    pub shape_margin: f64,
}

/// One object a caption names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectSpec {
    pub color: Color,
    pub shape: Shape,
    pub size: Option<SizeClass>,
    pub position: Option<Position>,
}

/// What a caption says: one object (with a position when named), or two in a relation
/// (`objects[0]` is `relation` `objects[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionSpec {
    pub objects: Vec<ObjectSpec>,
    pub relation: Option<Relation>,
}

/// How an image matches a caption.
///
/// Single-object captions: `color`, `shape`, `position` and `size` compare the main (largest)
/// object with the caption (`position` / `size` are `None` when the caption names none); the
/// two-object fields are `None`.
///
/// Two-object captions: `color` (`shape`) is true when the two named colours (shapes) are on two
/// distinct objects; `both_present` when both hold; `binding` when two distinct objects carry the
/// two named (colour, shape) pairs; `relation` when, in addition, they stand in the named
/// relation; `size` when the caption names sizes and a bound pair has them (`None` without
/// sizes). Only the [`MAX_OBJECTS_SCORED`] largest objects are considered, so that a scatter of
/// blobs cannot satisfy every caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageScore {
    /// Objects found in the image.
    pub objects_found: usize,
    pub color: bool,
    pub shape: bool,
    pub position: Option<bool>,
    pub size: Option<bool>,
    pub both_present: Option<bool>,
    pub binding: Option<bool>,
    pub relation: Option<bool>,
}

/// Two-object captions are scored on at most this many objects, the largest.
pub const MAX_OBJECTS_SCORED: usize = 4;

/// Score `img` against `spec` (see [`ImageScore`]).
pub fn score(img: &RgbImage, spec: &CaptionSpec) -> ImageScore {
    score_readings(&read_objects(img), spec)
}

/// Score objects already read (largest first, as [`read_objects`] gives them) against `spec`.
pub fn score_readings(objects: &[ObjectReading], spec: &CaptionSpec) -> ImageScore {
    let mut score = ImageScore {
        objects_found: objects.len(),
        ..ImageScore::default()
    };
    match &spec.objects[..] {
        [want] => {
            let main = objects.first();
            score.color = main.is_some_and(|o| o.color == want.color);
            score.shape = main.is_some_and(|o| o.shape == want.shape);
            score.position = want.position.map(|p| main.is_some_and(|o| o.position == p));
            score.size = want.size.map(|s| main.is_some_and(|o| o.size == s));
        }
        [a, b] => {
            let objects = &objects[..objects.len().min(MAX_OBJECTS_SCORED)];
            let pairs = || {
                (0..objects.len()).flat_map(move |i| {
                    (0..objects.len())
                        .filter(move |&j| j != i)
                        .map(move |j| (&objects[i], &objects[j]))
                })
            };
            score.color = pairs().any(|(x, y)| x.color == a.color && y.color == b.color);
            score.shape = pairs().any(|(x, y)| x.shape == a.shape && y.shape == b.shape);
            score.both_present = Some(score.color && score.shape);
            let bound = |(x, y): &(&ObjectReading, &ObjectReading)| {
                (x.color, x.shape, y.color, y.shape) == (a.color, a.shape, b.color, b.shape)
            };
            score.binding = Some(pairs().any(|p| bound(&p)));
            score.relation = Some(match spec.relation {
                Some(relation) => pairs()
                    .filter(bound)
                    .any(|(x, y)| relation.holds(x.center, y.center)),
                None => pairs().any(|p| bound(&p)),
            });
            score.size = match (a.size, b.size) {
                (None, None) => None,
                _ => Some(pairs().filter(bound).any(|(x, y)| {
                    a.size.is_none_or(|s| s == x.size) && b.size.is_none_or(|s| s == y.size)
                })),
            };
        }
        _ => {}
    }
    score
}
