//! The shapes world's vocabulary and ground truth: shapes, the named palette, size classes,
//! positions on a 3×3 grid and spatial relations, plus the [`Scene`] every sample is rendered
//! from. Scorers use the public constants here to check generated images against captions.

pub mod caption;
pub mod render;
pub mod scene;

use serde::{Deserialize, Serialize};

/// The object shapes. Each fits inside its bounding circle (diameter `size_px`) and has its
/// centroid at the circle's centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    /// Axis-aligned, side 1.4 × radius.
    Square,
    /// Equilateral, pointing up.
    Triangle,
    /// Five points, pointing up, inner radius half the outer.
    Star,
    /// A plus sign: arms 0.6 × radius thick, 1.8 × radius long.
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The larger of the shape's width and height as a fraction of its bounding-circle diameter
    /// (a scorer divides a measured extent by it to recover `size_px`).
    pub fn extent_ratio(self) -> f64 {
        match self {
            Shape::Circle => 1.0,
            Shape::Square => 0.7,
            Shape::Triangle => 0.866,
            Shape::Star => 0.951,
            Shape::Cross => 0.9,
        }
    }
}

/// The named palette: saturated colours well apart in RGB (every pair ≥ 100 apart) and far from
/// every background (≥ 140 apart), so the nearest palette entry to an object's mean colour names
/// it unambiguously.
pub const PALETTE: [(&str, [u8; 3]); 8] = [
    ("red", [230, 25, 25]),
    ("green", [40, 215, 40]),
    ("blue", [30, 70, 235]),
    ("yellow", [240, 220, 20]),
    ("purple", [150, 40, 210]),
    ("orange", [255, 120, 0]),
    ("cyan", [20, 210, 220]),
    ("white", [245, 245, 245]),
];

/// An entry of [`PALETTE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    Cyan,
    White,
}

impl Color {
    /// In [`PALETTE`] order.
    pub const ALL: [Color; 8] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
        Color::Cyan,
        Color::White,
    ];

    pub fn name(self) -> &'static str {
        PALETTE[self as usize].0
    }

    pub fn rgb(self) -> [u8; 3] {
        PALETTE[self as usize].1
    }

    pub fn from_name(name: &str) -> Option<Color> {
        Color::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The palette colour nearest to `rgb` (Euclidean in RGB), for scoring measured colours.
    pub fn nearest(rgb: [f64; 3]) -> Color {
        let dist = |c: Color| {
            let p = c.rgb();
            (0..3).map(|k| (rgb[k] - p[k] as f64).powi(2)).sum::<f64>()
        };
        Color::ALL
            .into_iter()
            .min_by(|a, b| dist(*a).total_cmp(&dist(*b)))
            .expect("the palette is not empty")
    }
}

/// Object size class; the bounding-circle diameter is drawn from the class's range, given as
/// fractions of the image side. The ranges are far apart so the class is readable from pixels:
/// a shape's extent is 0.7–1.0 × its diameter, so even the narrowest large object (a square) is
/// wider than the widest small one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeClass {
    Small,
    Large,
}

impl SizeClass {
    pub const ALL: [SizeClass; 2] = [SizeClass::Small, SizeClass::Large];

    pub fn name(self) -> &'static str {
        match self {
            SizeClass::Small => "small",
            SizeClass::Large => "large",
        }
    }

    /// `[min, max)` bounding-circle diameter as a fraction of the image side.
    pub fn diameter_range(self) -> [f64; 2] {
        match self {
            SizeClass::Small => [0.18, 0.24],
            SizeClass::Large => [0.38, 0.46],
        }
    }
}

/// The cell of a 3×3 grid (image thirds) holding an object's centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Position {
    #[serde(rename = "top left")]
    TopLeft,
    #[serde(rename = "top")]
    Top,
    #[serde(rename = "top right")]
    TopRight,
    #[serde(rename = "left")]
    Left,
    #[serde(rename = "center")]
    Center,
    #[serde(rename = "right")]
    Right,
    #[serde(rename = "bottom left")]
    BottomLeft,
    #[serde(rename = "bottom")]
    Bottom,
    #[serde(rename = "bottom right")]
    BottomRight,
}

impl Position {
    /// Row-major: index = 3 × row + column.
    pub const ALL: [Position; 9] = [
        Position::TopLeft,
        Position::Top,
        Position::TopRight,
        Position::Left,
        Position::Center,
        Position::Right,
        Position::BottomLeft,
        Position::Bottom,
        Position::BottomRight,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Position::TopLeft => "top left",
            Position::Top => "top",
            Position::TopRight => "top right",
            Position::Left => "left",
            Position::Center => "center",
            Position::Right => "right",
            Position::BottomLeft => "bottom left",
            Position::Bottom => "bottom",
            Position::BottomRight => "bottom right",
        }
    }

    /// `(column, row)`, each in 0..3.
    pub fn cell(self) -> (u32, u32) {
        let i = self as u32;
        (i % 3, i / 3)
    }

    /// The cell as `[x0, y0, x1, y1]` in pixels of a `size`×`size` image.
    pub fn region(self, size: u32) -> [f64; 4] {
        let (c, r) = self.cell();
        let third = size as f64 / 3.0;
        [
            c as f64 * third,
            r as f64 * third,
            (c + 1) as f64 * third,
            (r + 1) as f64 * third,
        ]
    }

    /// The cell containing the point `(x, y)` of a `size`×`size` image.
    pub fn of_point(x: f64, y: f64, size: u32) -> Position {
        let third = size as f64 / 3.0;
        let cell = |v: f64| ((v / third).floor().clamp(0.0, 2.0)) as usize;
        Position::ALL[3 * cell(y) + cell(x)]
    }
}

/// How the first object of a two-object scene sits relative to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Relation {
    #[serde(rename = "left of")]
    LeftOf,
    #[serde(rename = "right of")]
    RightOf,
    #[serde(rename = "above")]
    Above,
    #[serde(rename = "below")]
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// True when `a` (centre) stands in this relation to `b`: separated more along the
    /// relation's axis than across it, in the named direction.
    pub fn holds(self, a: (f64, f64), b: (f64, f64)) -> bool {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        match self {
            Relation::LeftOf => dx > dy.abs(),
            Relation::RightOf => -dx > dy.abs(),
            Relation::Above => dy > dx.abs(),
            Relation::Below => -dy > dx.abs(),
        }
    }
}

/// One object of a scene, as recorded in the sample's `.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub shape: Shape,
    pub color: Color,
    pub color_rgb: [u8; 3],
    pub size: SizeClass,
    /// Diameter of the bounding circle, pixels.
    pub size_px: f64,
    /// Centre (= pixel centroid of the shape), in pixels from the top-left image corner.
    pub center_x: f64,
    pub center_y: f64,
    /// The 3×3 grid cell of the centre.
    pub position: Position,
}

/// Everything an image is rendered from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Image side in pixels (images are square).
    pub size: u32,
    /// The plain background colour (texture, when on, varies around it by a few levels).
    pub background_rgb: [u8; 3],
    pub objects: Vec<SceneObject>,
    /// For two-object scenes: `objects[0]` is `relation` `objects[1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<Relation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(a: [u8; 3], b: [u8; 3]) -> f64 {
        (0..3)
            .map(|k| (a[k] as f64 - b[k] as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn palette_is_well_separated_and_far_from_backgrounds() {
        for (i, a) in PALETTE.iter().enumerate() {
            for b in &PALETTE[i + 1..] {
                assert!(dist(a.1, b.1) >= 100.0, "{} vs {}", a.0, b.0);
            }
            for bg in scene::BACKGROUND_EXTREMES {
                assert!(dist(a.1, bg) >= 140.0, "{} vs background {bg:?}", a.0);
            }
        }
        for c in Color::ALL {
            assert_eq!(Color::from_name(c.name()), Some(c));
            let rgb = c.rgb().map(|v| v as f64);
            assert_eq!(Color::nearest(rgb), c);
        }
    }

    #[test]
    fn grid_cells_round_trip() {
        for p in Position::ALL {
            let [x0, y0, x1, y1] = p.region(64);
            assert_eq!(Position::of_point((x0 + x1) / 2.0, (y0 + y1) / 2.0, 64), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
        assert_eq!(Position::of_point(64.0, -1.0, 64), Position::TopRight);
    }
}
