//! Sampling a random [`Scene`]: background, one or two objects, sizes, positions, relation.
//!
//! Every draw comes from the one `KeyedRng` passed in, in a fixed order, so a scene is a pure
//! function of that stream.

use super::{Color, Position, Relation, Scene, SceneObject, Shape, SizeClass};
use unclip_rng::KeyedRng;

/// Background channel values lie in this range: a dark neutral grey (mean level drawn from
/// `[50, 70]`) with a tint of at most ±5 per channel.
pub const BACKGROUND_CHANNEL_RANGE: [u8; 2] = [45, 75];

/// The corners of the background colour box, for distance checks.
pub const BACKGROUND_EXTREMES: [[u8; 3]; 8] = {
    let [lo, hi] = BACKGROUND_CHANNEL_RANGE;
    [
        [lo, lo, lo],
        [lo, lo, hi],
        [lo, hi, lo],
        [lo, hi, hi],
        [hi, lo, lo],
        [hi, lo, hi],
        [hi, hi, lo],
        [hi, hi, hi],
    ]
};

/// The smallest image side the world supports (objects must fit inside a grid cell).
pub const MIN_SIZE: u32 = 16;

/// Centres keep this fraction of the side away from the edges of their grid cell, so a measured
/// centroid lands in the declared cell despite antialiasing and JPEG noise.
const CELL_MARGIN: f64 = 0.04;

/// Two objects' bounding circles are at least this far apart (fraction of the side, min 2 px).
const GAP: f64 = 0.04;

fn uniform(rng: &mut KeyedRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform_f64()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn pick<T: Copy>(rng: &mut KeyedRng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

fn background(rng: &mut KeyedRng) -> [u8; 3] {
    let level = 50 + rng.below(21) as i32;
    [0; 3].map(|_| (level + rng.below(11) as i32 - 5) as u8)
}

fn diameter(rng: &mut KeyedRng, size: SizeClass, side: u32) -> f64 {
    let [lo, hi] = size.diameter_range();
    round2(uniform(rng, lo, hi) * side as f64)
}

fn object(
    shape: Shape,
    color: Color,
    size: SizeClass,
    d: f64,
    x: f64,
    y: f64,
    side: u32,
) -> SceneObject {
    SceneObject {
        shape,
        color,
        color_rgb: color.rgb(),
        size,
        size_px: d,
        center_x: x,
        center_y: y,
        position: Position::of_point(x, y, side),
    }
}

/// Sample a scene of `side`×`side` pixels; with probability `two_object_fraction` it holds two
/// objects in a spatial relation, otherwise one object in a grid cell.
pub fn sample_scene(rng: &mut KeyedRng, side: u32, two_object_fraction: f64) -> Scene {
    let background_rgb = background(rng);
    let two = rng.bernoulli(two_object_fraction);
    let (objects, relation) = if two {
        let (objects, relation) = two_objects(rng, side);
        (objects, Some(relation))
    } else {
        (vec![one_object(rng, side)], None)
    };
    Scene {
        size: side,
        background_rgb,
        objects,
        relation,
    }
}

fn one_object(rng: &mut KeyedRng, side: u32) -> SceneObject {
    let shape = pick(rng, &Shape::ALL);
    let color = pick(rng, &Color::ALL);
    let size = pick(rng, &SizeClass::ALL);
    let position = pick(rng, &Position::ALL);
    let d = diameter(rng, size, side);
    let s = side as f64;
    let margin = CELL_MARGIN * s;
    let r = d / 2.0;
    let [x0, y0, x1, y1] = position.region(side);
    // Inside the cell (less the margin) and with the whole object inside the image.
    let range = |lo: f64, hi: f64| {
        let lo = (lo + margin).max(r + 1.0);
        let hi = (hi - margin).min(s - r - 1.0);
        (lo, hi.max(lo))
    };
    let (xl, xh) = range(x0, x1);
    let (yl, yh) = range(y0, y1);
    let x = round2(uniform(rng, xl, xh));
    let y = round2(uniform(rng, yl, yh));
    object(shape, color, size, d, x, y, side)
}

fn two_objects(rng: &mut KeyedRng, side: u32) -> (Vec<SceneObject>, Relation) {
    let relation = pick(rng, &Relation::ALL);
    let first = (pick(rng, &Shape::ALL), pick(rng, &Color::ALL));
    // Distinct (shape, colour) pairs keep "the red circle" references unambiguous.
    let mut second = (pick(rng, &Shape::ALL), pick(rng, &Color::ALL));
    while second == first {
        second = (pick(rng, &Shape::ALL), pick(rng, &Color::ALL));
    }
    let mut sizes = [pick(rng, &SizeClass::ALL), pick(rng, &SizeClass::ALL)];
    let mut d = [diameter(rng, sizes[0], side), diameter(rng, sizes[1], side)];
    let s = side as f64;
    let gap = (GAP * s).max(2.0);
    if d[0] + d[1] + gap + 2.0 > s {
        // Two large objects do not fit side by side in tiny images: make both small.
        sizes = [SizeClass::Small; 2];
        d = [diameter(rng, sizes[0], side), diameter(rng, sizes[1], side)];
    }
    let r = [d[0] / 2.0, d[1] / 2.0];

    // Place along the relation's axis: `lead` is the object with the smaller coordinate
    // (left / top), `trail` the other. The bounding circles are separated along the axis by
    // at least `gap`, so the objects never overlap; across the axis they differ by at most half
    // the along-axis distance, so the relation is unambiguous.
    let first_leads = matches!(relation, Relation::LeftOf | Relation::Above);
    let (lead, trail) = if first_leads { (0, 1) } else { (1, 0) };
    let need = r[lead] + r[trail] + gap;
    let lead_hi = (s - 1.0 - r[trail] - need).max(r[lead] + 1.0);
    let a_lead = round2(uniform(rng, r[lead] + 1.0, lead_hi));
    let a_trail = round2(uniform(
        rng,
        a_lead + need,
        (s - 1.0 - r[trail]).max(a_lead + need),
    ));
    let across_lead = round2(uniform(rng, r[lead] + 1.0, s - 1.0 - r[lead]));
    let half = 0.5 * (a_trail - a_lead);
    let lo = (r[trail] + 1.0).max(across_lead - half);
    let hi = (s - 1.0 - r[trail]).min(across_lead + half);
    let across_trail = if lo <= hi {
        round2(uniform(rng, lo, hi))
    } else {
        across_lead.clamp(r[trail] + 1.0, s - 1.0 - r[trail])
    };

    let horizontal = matches!(relation, Relation::LeftOf | Relation::RightOf);
    let mut centre = [(0.0, 0.0); 2];
    centre[lead] = if horizontal {
        (a_lead, across_lead)
    } else {
        (across_lead, a_lead)
    };
    centre[trail] = if horizontal {
        (a_trail, across_trail)
    } else {
        (across_trail, a_trail)
    };
    let kinds = [first, second];
    let objects = (0..2)
        .map(|k| {
            let (shape, color) = kinds[k];
            object(shape, color, sizes[k], d[k], centre[k].0, centre[k].1, side)
        })
        .collect();
    (objects, relation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_respect_their_own_ground_truth() {
        for side in [MIN_SIZE, 24, 32, 64, 100] {
            for i in 0..2000 {
                let mut rng = KeyedRng::new(1, "scene-test", 0, i);
                let scene = sample_scene(&mut rng, side, 0.5);
                let s = side as f64;
                for o in &scene.objects {
                    let r = o.size_px / 2.0;
                    let [lo, hi] = o.size.diameter_range();
                    assert!(o.size_px >= lo * s - 0.01 && o.size_px <= hi * s + 0.01);
                    assert!(
                        o.center_x - r >= 0.99 && o.center_x + r <= s - 0.99,
                        "{o:?}"
                    );
                    assert!(
                        o.center_y - r >= 0.99 && o.center_y + r <= s - 0.99,
                        "{o:?}"
                    );
                    assert_eq!(o.position, Position::of_point(o.center_x, o.center_y, side));
                }
                if let [a, b] = &scene.objects[..] {
                    let relation = scene.relation.unwrap();
                    assert!((a.shape, a.color) != (b.shape, b.color));
                    let dist = (a.center_x - b.center_x).hypot(a.center_y - b.center_y);
                    assert!(dist >= (a.size_px + b.size_px) / 2.0 + 1.0, "{scene:?}");
                    assert!(
                        relation.holds((a.center_x, a.center_y), (b.center_x, b.center_y)),
                        "{scene:?}"
                    );
                } else {
                    assert!(scene.relation.is_none());
                    // Single objects sit inside their cell with a margin.
                    let o = &scene.objects[0];
                    let [x0, y0, x1, y1] = o.position.region(side);
                    let m = CELL_MARGIN * s - 0.01;
                    assert!(o.center_x >= x0 + m && o.center_x <= x1 - m, "{o:?}");
                    assert!(o.center_y >= y0 + m && o.center_y <= y1 - m, "{o:?}");
                }
            }
        }
    }

    #[test]
    fn backgrounds_stay_in_their_box() {
        let [lo, hi] = BACKGROUND_CHANNEL_RANGE;
        for i in 0..500 {
            let bg = background(&mut KeyedRng::new(0, "bg", 0, i));
            assert!(bg.iter().all(|&c| (lo..=hi).contains(&c)), "{bg:?}");
        }
    }
}
