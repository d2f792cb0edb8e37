use super::*;
use image::imageops::{self, FilterType};
use std::collections::{BTreeMap, BTreeSet};
use unclip_data_tools::shapes::caption::caption;
use unclip_data_tools::shapes::render::render_scene;
use unclip_data_tools::shapes::scene::sample_scene;
use unclip_data_tools::shapes::Scene;
use unclip_rng::KeyedRng;

/// A ground-truth sample: the scene (at the side it was rendered), the image (maybe
/// downscaled) and its caption.
struct Sample {
    scene: Scene,
    image: RgbImage,
    caption: String,
}

/// `count` scenes rendered at 64 px with texture; `side` 32 gives a 2× antialiased
/// downscale with `filter`, as the training pipeline's resize does.
fn samples(
    seed: u64,
    count: u64,
    two_object_fraction: f64,
    side: u32,
    filter: FilterType,
) -> Vec<Sample> {
    (0..count)
        .map(|i| {
            let scene = sample_scene(
                &mut KeyedRng::new(seed, "score-test/scene", 0, i),
                64,
                two_object_fraction,
            );
            let mut texture = KeyedRng::new(seed, "score-test/texture", 0, i);
            let mut image = render_scene(&scene, Some(&mut texture));
            if side != 64 {
                image = imageops::resize(&image, side, side, filter);
            }
            let caption = caption(&scene, &mut KeyedRng::new(seed, "score-test/caption", 0, i));
            Sample {
                scene,
                image,
                caption,
            }
        })
        .collect()
}

/// Fractions of images whose (color, shape, position, size) match their spec.
fn accuracy(images: &[&RgbImage], specs: &[CaptionSpec]) -> [f64; 4] {
    let mut hits = [0usize; 4];
    for (img, spec) in images.iter().zip(specs) {
        let s = score(img, spec);
        for (k, ok) in [
            s.color,
            s.shape,
            s.position.unwrap_or(false),
            s.size.unwrap_or(false),
        ]
        .into_iter()
        .enumerate()
        {
            hits[k] += ok as usize;
        }
    }
    hits.map(|h| h as f64 / images.len() as f64)
}

fn specs_of(samples: &[Sample]) -> Vec<CaptionSpec> {
    samples
        .iter()
        .map(|s| parse_caption(&s.caption).expect("generated captions parse"))
        .collect()
}

/// Shape confusions (truth → read) of the main object, for failure messages.
fn confusions(samples: &[Sample], images: &[RgbImage]) -> Vec<String> {
    let mut out = Vec::new();
    for (s, img) in samples.iter().zip(images) {
        let truth = &s.scene.objects[0];
        match read_objects(img).first() {
            Some(o)
                if (o.shape, o.color, o.position) == (truth.shape, truth.color, truth.position) => {
            }
            Some(o) => out.push(format!(
                "{:?} {:?} {:?} d={:.1} read as {:?} {:?} {:?} d={:.1} err={:.3}",
                truth.color,
                truth.shape,
                truth.position,
                truth.size_px,
                o.color,
                o.shape,
                o.position,
                o.diameter,
                o.shape_error
            )),
            None => out.push(format!("{truth:?} not found")),
        }
    }
    out
}

fn check_single(label: &str, samples: &[Sample], images: &[RgbImage], min: f64) {
    let refs: Vec<&RgbImage> = images.iter().collect();
    let [color, shape, position, size] = accuracy(&refs, &specs_of(samples));
    eprintln!(
        "{label}: {} images: color {color:.4}, shape {shape:.4}, position {position:.4}, size {size:.4}",
        images.len()
    );
    assert!(
        color >= min && shape >= min && position >= min,
        "{label}: color {color}, shape {shape}, position {position}: {:#?}",
        confusions(samples, images)
    );
}

#[test]
fn reads_ground_truth_at_64_px() {
    let s = samples(1, 400, 0.0, 64, FilterType::Triangle);
    let images: Vec<RgbImage> = s.iter().map(|s| s.image.clone()).collect();
    check_single("64 px", &s, &images, 0.99);
}

#[test]
fn reads_ground_truth_at_32_px() {
    for (filter, name) in [
        (FilterType::Triangle, "triangle"),
        (FilterType::CatmullRom, "catmull-rom"),
    ] {
        let s = samples(2, 400, 0.0, 32, filter);
        let images: Vec<RgbImage> = s.iter().map(|s| s.image.clone()).collect();
        check_single(&format!("32 px ({name})"), &s, &images, 0.99);
    }
}

#[test]
fn scores_about_chance_on_shuffled_captions() {
    for side in [64, 32] {
        let s = samples(3, 600, 0.0, side, FilterType::Triangle);
        let specs = specs_of(&s);
        let perm = KeyedRng::new(3, "score-test/shuffle", 0, side as u64).permutation(s.len());
        let images: Vec<&RgbImage> = perm.iter().map(|&i| &s[i].image).collect();
        let [color, shape, position, _] = accuracy(&images, &specs);
        eprintln!(
            "{side} px, shuffled captions: color {color:.4} (chance 0.125), shape {shape:.4} \
             (0.2), position {position:.4} (0.111)"
        );
        // Tolerances ≈ 3 standard deviations of a binomial over 600 draws.
        assert!((color - 1.0 / 8.0).abs() < 0.05, "{color}");
        assert!((shape - 1.0 / 5.0).abs() < 0.05, "{shape}");
        assert!((position - 1.0 / 9.0).abs() < 0.04, "{position}");
    }
}

#[test]
fn binds_two_object_scenes() {
    for side in [64, 32] {
        let s = samples(4, 300, 1.0, side, FilterType::Triangle);
        let specs = specs_of(&s);
        let (mut binding, mut relation, mut both, mut two) = (0, 0, 0, 0);
        let mut failures = Vec::new();
        for (sample, spec) in s.iter().zip(&specs) {
            assert_eq!(spec.objects.len(), 2);
            let r = score(&sample.image, spec);
            binding += r.binding.unwrap() as usize;
            relation += r.relation.unwrap() as usize;
            both += r.both_present.unwrap() as usize;
            two += (r.objects_found == 2) as usize;
            if !r.binding.unwrap() {
                let read: Vec<_> = read_objects(&sample.image)
                    .iter()
                    .map(|o| (o.color, o.shape, o.diameter))
                    .collect();
                failures.push(format!("{}: read {read:?}", sample.caption));
            }
        }
        let n = s.len() as f64;
        let (binding, relation, both, two) = (
            binding as f64 / n,
            relation as f64 / n,
            both as f64 / n,
            two as f64 / n,
        );
        eprintln!(
            "two objects at {side} px: binding {binding:.4}, relation {relation:.4}, \
             both present {both:.4}, exactly two found {two:.4}"
        );
        assert!(binding >= 0.95, "{side} px: {binding}: {failures:#?}");
        assert!(relation >= 0.95, "{side} px: {relation}");

        // Against another image's caption, binding is rare: both (colour, shape) pairs must
        // come up by chance (≈ 2 / 40²).
        let perm = KeyedRng::new(4, "score-test/shuffle", 0, side as u64).permutation(s.len());
        let shuffled = perm
            .iter()
            .zip(&specs)
            .filter(|(&i, spec)| score(&s[i].image, spec).binding.unwrap())
            .count() as f64
            / n;
        eprintln!("two objects at {side} px, shuffled captions: binding {shuffled:.4}");
        assert!(shuffled <= 0.03, "{shuffled}");
    }
}

/// Gaussian blur (σ = 0.7 px) plus Gaussian noise (σ = 8 levels per channel).
fn degrade(img: &RgbImage, index: u64) -> RgbImage {
    let mut out = imageops::blur(img, 0.7);
    let mut rng = KeyedRng::new(5, "score-test/noise", 0, index);
    for p in out.pixels_mut() {
        for k in 0..3 {
            p[k] = (p[k] as f64 + 8.0 * rng.normal_f64())
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[test]
fn tolerates_blur_and_noise() {
    for side in [64, 32] {
        let s = samples(5, 300, 0.0, side, FilterType::Triangle);
        let images: Vec<RgbImage> = s
            .iter()
            .enumerate()
            .map(|(i, s)| degrade(&s.image, i as u64))
            .collect();
        check_single(&format!("{side} px blurred + noised"), &s, &images, 0.95);
    }
}

#[test]
fn captions_round_trip_for_every_phrasing() {
    let mut phrasings = BTreeSet::new();
    for i in 0..3000 {
        let scene = sample_scene(&mut KeyedRng::new(6, "score-test/scene", 0, i), 64, 0.4);
        let text = caption(&scene, &mut KeyedRng::new(6, "score-test/caption", 0, i));
        let spec = parse_caption(&text).unwrap_or_else(|| panic!("`{text}` does not parse"));
        assert_eq!(spec.relation, scene.relation, "{text}");
        assert_eq!(spec.objects.len(), scene.objects.len(), "{text}");
        for (got, want) in spec.objects.iter().zip(&scene.objects) {
            assert_eq!((got.color, got.shape), (want.color, want.shape), "{text}");
            if let Some(size) = got.size {
                assert_eq!(size, want.size, "{text}");
            }
        }
        // The phrasing: the caption with its content words blanked.
        let mut pattern = text.clone();
        for o in &scene.objects {
            for word in [o.size.name(), o.color.name(), o.shape.name()] {
                pattern = pattern.replacen(&format!(" {word}"), " _", 1);
            }
        }
        pattern = pattern.replace(" an ", " a ").replace("an _", "a _");
        if let [o] = &scene.objects[..] {
            // Single objects always name their size and cell.
            assert_eq!(spec.objects[0].size, Some(o.size), "{text}");
            assert_eq!(spec.objects[0].position, Some(o.position), "{text}");
        } else {
            let sized = spec.objects.iter().filter(|o| o.size.is_some()).count();
            assert!(sized == 0 || sized == 2, "{text}");
            assert!(spec.objects.iter().all(|o| o.position.is_none()));
        }
        phrasings.insert(pattern);
    }
    // Single: 4 templates × 18 position phrases; pairs: 2 leads × sized or not × 4 relations.
    assert_eq!(phrasings.len(), 4 * 18 + 2 * 2 * 4, "{phrasings:#?}");
}

#[test]
fn parses_and_rejects() {
    let spec = parse_caption("A Large red Circle, in the top left corner.").unwrap();
    assert_eq!(
        spec.objects,
        vec![ObjectSpec {
            color: Color::Red,
            shape: Shape::Circle,
            size: Some(SizeClass::Large),
            position: Some(Position::TopLeft),
        }]
    );
    let spec = parse_caption("an orange star").unwrap();
    assert_eq!(spec.objects[0].position, None);
    assert_eq!(spec.objects[0].size, None);
    let spec = parse_caption("a blue square to the left of a white cross").unwrap();
    assert_eq!(spec.relation, Some(Relation::LeftOf));
    assert_eq!(spec.objects[1].color, Color::White);
    for garbage in [
        "",
        "   ",
        "hello world",
        "a red",
        "a circle",
        "a red circle blue",
        "a magenta circle",
        "a red hexagon on the left",
        "to the left of",
        "a red circle to the left of",
        "a large small red circle",
        "🙂 red 🙂",
    ] {
        assert_eq!(parse_caption(garbage), None, "{garbage:?}");
    }
}

#[test]
fn odd_images_do_not_panic() {
    let flat = RgbImage::from_pixel(32, 32, image::Rgb([60, 60, 60]));
    assert!(read_objects(&flat).is_empty());
    let spec = parse_caption("a small red circle in the center").unwrap();
    let s = score(&flat, &spec);
    assert_eq!(
        (s.objects_found, s.color, s.position),
        (0, false, Some(false))
    );
    let two = parse_caption("a red circle above a blue star").unwrap();
    assert_eq!(score(&flat, &two).binding, Some(false));
    for (w, h) in [(0, 0), (1, 1), (3, 7), (8, 8), (40, 17), (300, 300)] {
        let mut rng = KeyedRng::new(7, "score-test/odd", w as u64, h as u64);
        let noise = RgbImage::from_fn(w, h, |_, _| {
            image::Rgb([0; 3].map(|_| rng.below(256) as u8))
        });
        let _ = score(&noise, &spec);
        let _ = score(&noise, &two);
        let white = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
        let _ = score(&white, &spec);
        // Half object, half background.
        let half = RgbImage::from_fn(w, h, |x, _| {
            image::Rgb(if x < w / 2 { [230, 25, 25] } else { [60; 3] })
        });
        let _ = score(&half, &spec);
    }
}

#[test]
fn is_fast() {
    let s = samples(8, 100, 0.3, 64, FilterType::Triangle);
    let start = std::time::Instant::now();
    let mut found = 0;
    for sample in &s {
        found += read_objects(&sample.image).len();
    }
    let per_second = s.len() as f64 / start.elapsed().as_secs_f64();
    eprintln!("read {per_second:.0} images/s at 64 px ({found} objects)");
    assert!(found >= s.len());
}

/// Counts of (true shape, shape read, size class).
type Confusions = BTreeMap<(Shape, Shape, &'static str), usize>;

/// Accuracy (color, shape, position, size) after a Gaussian blur of `sigma` px and noise of
/// `noise` levels, with the shape confusions (truth, read, size class) for failure messages.
fn degraded_accuracy(side: u32, sigma: f32, noise: f64) -> ([f64; 4], Confusions) {
    let s = samples(9, 300, 0.0, side, FilterType::Triangle);
    let images: Vec<RgbImage> = s
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut out = imageops::blur(&s.image, sigma);
            let mut rng = KeyedRng::new(9, "score-test/noise", 0, i as u64);
            for p in out.pixels_mut() {
                for k in 0..3 {
                    let v = p[k] as f64 + noise * rng.normal_f64();
                    p[k] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
            out
        })
        .collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let acc = accuracy(&refs, &specs_of(&s));
    let mut confusions = BTreeMap::new();
    for (s, img) in s.iter().zip(&images) {
        let t = &s.scene.objects[0];
        if let Some(o) = read_objects(img).first() {
            if o.shape != t.shape {
                *confusions
                    .entry((t.shape, o.shape, t.size.name()))
                    .or_insert(0) += 1;
            }
        }
    }
    (acc, confusions)
}

/// Heavier degradations than generated images should show: colour and position hold up, shape
/// degrades on small objects at 32 px (6–8 px across), which blur turns into blobs.
#[test]
fn degrades_gracefully() {
    for (side, sigma, noise, min_shape) in [
        (64, 1.5, 12.0, 0.97),
        (64, 2.0, 16.0, 0.9),
        (64, 1.0, 25.0, 0.97),
        (32, 1.0, 12.0, 0.8),
        (32, 1.5, 12.0, 0.6),
    ] {
        let (acc, confusions) = degraded_accuracy(side, sigma, noise);
        let [color, shape, position, size] = acc;
        eprintln!(
            "{side} px, blur σ {sigma}, noise {noise}: color {color:.4}, shape {shape:.4}, \
             position {position:.4}, size {size:.4}; shape confusions {confusions:?}"
        );
        assert!(color >= 0.98 && position >= 0.98, "{acc:?}");
        assert!(shape >= min_shape, "{acc:?} {confusions:?}");
    }
}

#[test]
fn reads_faint_objects() {
    // Objects at 35 % contrast (as a washed-out generated image might draw them).
    let s = samples(10, 200, 0.0, 64, FilterType::Triangle);
    let images: Vec<RgbImage> = s
        .iter()
        .map(|s| {
            let bg = s.scene.background_rgb;
            let mut img = s.image.clone();
            for p in img.pixels_mut() {
                for k in 0..3 {
                    p[k] = (bg[k] as f64 + 0.35 * (p[k] as f64 - bg[k] as f64)).round() as u8;
                }
            }
            img
        })
        .collect();
    check_single("64 px at 35 % contrast", &s, &images, 0.97);
}
