//! Captions from a scene's ground truth: varied wording, never ambiguous content.
//!
//! Grammar (one template and one phrase per slot drawn at random):
//!
//! ```text
//! one object:   [a | there is a | a picture of a] SIZE COLOR SHAPE POSITION
//!               | POSITION there is a SIZE COLOR SHAPE
//! two objects:  [a | there is a] [SIZE] COLOR SHAPE RELATION a [SIZE] COLOR SHAPE
//!               (sizes named for both objects or for neither)
//! POSITION:     in the center | in the middle | on the left | on the left side | at the top |
//!               near the top | in the top left corner | at the top left | … (see `phrases`)
//! RELATION:     to the left of | to the right of | above | below
//! ```
//!
//! Every caption names the colour and shape of each object, the size and grid cell of a single
//! object, and the relation of a pair; "a"/"an" follows the next word.

use super::{Position, Relation, Scene, SceneObject};
use unclip_rng::KeyedRng;

/// The ways a grid cell is said; every phrase names exactly that cell.
pub fn position_phrases(position: Position) -> &'static [&'static str] {
    match position {
        Position::Center => &["in the center", "in the middle"],
        Position::Left => &["on the left", "on the left side"],
        Position::Right => &["on the right", "on the right side"],
        Position::Top => &["at the top", "near the top"],
        Position::Bottom => &["at the bottom", "near the bottom"],
        Position::TopLeft => &["in the top left corner", "at the top left"],
        Position::TopRight => &["in the top right corner", "at the top right"],
        Position::BottomLeft => &["in the bottom left corner", "at the bottom left"],
        Position::BottomRight => &["in the bottom right corner", "at the bottom right"],
    }
}

/// How a relation is said between the two object descriptions.
pub fn relation_phrase(relation: Relation) -> &'static str {
    match relation {
        Relation::LeftOf => "to the left of",
        Relation::RightOf => "to the right of",
        Relation::Above => "above",
        Relation::Below => "below",
    }
}

/// "a" or "an" for `word`.
fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// "a small red circle" / "an orange star".
fn described(o: &SceneObject, with_size: bool) -> String {
    let words = if with_size {
        format!("{} {} {}", o.size.name(), o.color.name(), o.shape.name())
    } else {
        format!("{} {}", o.color.name(), o.shape.name())
    };
    format!("{} {words}", article(&words))
}

fn pick<'a>(rng: &mut KeyedRng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

/// A caption for `scene`, worded with draws from `rng`.
pub fn caption(scene: &Scene, rng: &mut KeyedRng) -> String {
    match (&scene.objects[..], scene.relation) {
        ([a, b], Some(relation)) => {
            let with_size = rng.bernoulli(0.5);
            let lead = pick(rng, &["", "there is "]);
            format!(
                "{lead}{} {} {}",
                described(a, with_size),
                relation_phrase(relation),
                described(b, with_size)
            )
        }
        _ => {
            let o = &scene.objects[0];
            let position = pick(rng, position_phrases(o.position));
            let object = described(o, true);
            match rng.below(4) {
                0 => format!("{object} {position}"),
                1 => format!("there is {object} {position}"),
                2 => format!("a picture of {object} {position}"),
                _ => format!("{position} there is {object}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{Color, Shape, SizeClass};

    fn obj(shape: Shape, color: Color, size: SizeClass, position: Position) -> SceneObject {
        SceneObject {
            shape,
            color,
            color_rgb: color.rgb(),
            size,
            size_px: 10.0,
            center_x: 0.0,
            center_y: 0.0,
            position,
        }
    }

    #[test]
    fn captions_read_naturally() {
        let single = Scene {
            size: 64,
            background_rgb: [60; 3],
            objects: vec![obj(
                Shape::Circle,
                Color::Red,
                SizeClass::Small,
                Position::Left,
            )],
            relation: None,
        };
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            seen.insert(caption(&single, &mut KeyedRng::new(0, "c", 0, i)));
        }
        assert!(seen.contains("a small red circle on the left"), "{seen:?}");
        assert!(
            seen.contains("on the left side there is a small red circle"),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 8);

        let pair = Scene {
            size: 64,
            background_rgb: [60; 3],
            objects: vec![
                obj(
                    Shape::Square,
                    Color::Orange,
                    SizeClass::Large,
                    Position::Top,
                ),
                obj(
                    Shape::Triangle,
                    Color::Yellow,
                    SizeClass::Small,
                    Position::Bottom,
                ),
            ],
            relation: Some(Relation::Above),
        };
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            seen.insert(caption(&pair, &mut KeyedRng::new(0, "c", 0, i)));
        }
        assert!(
            seen.contains("an orange square above a yellow triangle"),
            "{seen:?}"
        );
        assert!(
            seen.contains("there is a large orange square above a small yellow triangle"),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 4);
    }
}
