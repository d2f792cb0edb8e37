//! [`parse_caption`]: a caption of the shapes world's grammar read back into what it says.

use unclip_data_tools::shapes::caption::{position_phrases, relation_phrase};
use unclip_data_tools::shapes::{Color, Position, Relation, Shape, SizeClass};

use super::{CaptionSpec, ObjectSpec};

/// Words a caption may hold besides the content words ("a picture of a …", "there is an …").
const FILLER: [&str; 9] = [
    "a", "an", "the", "there", "is", "picture", "of", "image", "photo",
];

/// Parse a caption of the shapes world's grammar (see [`super::caption`]): one object with its
/// colour, shape and optionally size and position phrase, or two objects (colour, shape,
/// optional size each) around a relation phrase. Case and punctuation are ignored; anything
/// else (an unknown word, a missing colour or shape) gives `None`.
pub fn parse_caption(caption: &str) -> Option<CaptionSpec> {
    let lower = caption.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    // Two objects: split at the relation phrase.
    for relation in Relation::ALL {
        let phrase: Vec<&str> = relation_phrase(relation).split_whitespace().collect();
        if let Some(at) = find_words(&words, &phrase) {
            let first = parse_object(&words[..at])?;
            let second = parse_object(&words[at + phrase.len()..])?;
            return Some(CaptionSpec {
                objects: vec![first, second],
                relation: Some(relation),
            });
        }
    }
    // One object: take out the (longest) position phrase, if any.
    let mut found: Option<(Position, usize, usize)> = None;
    for position in Position::ALL {
        for phrase in position_phrases(position) {
            let phrase: Vec<&str> = phrase.split_whitespace().collect();
            if let Some(at) = find_words(&words, &phrase) {
                if found.is_none_or(|(_, _, len)| phrase.len() > len) {
                    found = Some((position, at, phrase.len()));
                }
            }
        }
    }
    let (rest, position) = match found {
        Some((position, at, len)) => {
            let mut rest = words[..at].to_vec();
            rest.extend_from_slice(&words[at + len..]);
            (rest, Some(position))
        }
        None => (words, None),
    };
    let mut object = parse_object(&rest)?;
    object.position = position;
    Some(CaptionSpec {
        objects: vec![object],
        relation: None,
    })
}

fn find_words(words: &[&str], phrase: &[&str]) -> Option<usize> {
    if phrase.is_empty() || phrase.len() > words.len() {
        return None;
    }
    (0..=words.len() - phrase.len()).find(|&i| words[i..i + phrase.len()] == *phrase)
}

/// "[a|an|there is a|…] [SIZE] COLOR SHAPE".
fn parse_object(words: &[&str]) -> Option<ObjectSpec> {
    let content: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !FILLER.contains(w))
        .collect();
    let (size, rest) = match content.split_first() {
        Some((first, rest)) => match SizeClass::ALL.into_iter().find(|s| s.name() == *first) {
            Some(size) => (Some(size), rest),
            None => (None, &content[..]),
        },
        None => return None,
    };
    let [color, shape] = rest else {
        return None;
    };
    Some(ObjectSpec {
        color: Color::from_name(color)?,
        shape: Shape::from_name(shape)?,
        size,
        position: None,
    })
}
