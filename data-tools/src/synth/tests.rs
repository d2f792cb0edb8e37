use super::*;
use crate::shapes::caption::{position_phrases, relation_phrase};
use crate::shapes::{Color, Position, Relation, SizeClass};
use crate::shard_writer::read_members;
use std::collections::BTreeMap;
use std::path::Path;

fn options(out: &Path, count: u64) -> SynthOptions {
    let mut o = SynthOptions::new(out);
    o.count = count;
    o.samples_per_shard = 16;
    o
}

/// Every sample of a split: (image ext, image bytes, caption, json bytes, parsed record).
struct Sample {
    image_ext: String,
    image: Vec<u8>,
    caption: String,
    json: Vec<u8>,
    record: SampleRecord,
}

fn read_split(dir: &Path) -> Vec<Sample> {
    let mut tars: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    tars.sort();
    let mut samples = Vec::new();
    for tar in tars {
        let members = read_members(&tar).unwrap();
        for chunk in members.chunks(3) {
            let [(img_name, image), (txt_name, txt), (json_name, json)] = chunk else {
                panic!("sample with {} members", chunk.len());
            };
            let (key, image_ext) = img_name.split_once('.').unwrap();
            assert_eq!(txt_name, &format!("{key}.txt"));
            assert_eq!(json_name, &format!("{key}.json"));
            let record: SampleRecord = serde_json::from_slice(json).unwrap();
            assert_eq!(record.key, key);
            samples.push(Sample {
                image_ext: image_ext.to_string(),
                image: image.clone(),
                caption: String::from_utf8(txt.clone()).unwrap(),
                json: json.clone(),
                record,
            });
        }
    }
    samples
}

fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for split in Split::ALL {
        let Ok(entries) = std::fs::read_dir(dir.join(split.name())) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let name = format!(
                "{}/{}",
                split.name(),
                p.file_name().unwrap().to_string_lossy()
            );
            files.insert(name, std::fs::read(&p).unwrap());
        }
    }
    files
}

#[test]
fn same_command_twice_gives_identical_bytes_whatever_the_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (name, threads) in [("a", 1), ("b", 2), ("c", 3)] {
        let mut o = options(&dir.path().join(name), 120);
        o.holdout = "red circle".into();
        o.threads = threads;
        let report = synth(&o).unwrap();
        assert_eq!(
            report.counts.train + report.counts.val + report.counts.holdout,
            120
        );
        runs.push(all_files(&o.out));
    }
    assert!(runs[0].len() > 6, "{:?}", runs[0].keys());
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2]);
}

#[test]
fn sample_i_does_not_depend_on_count() {
    let dir = tempfile::tempdir().unwrap();
    let short = options(&dir.path().join("short"), 50);
    let long = options(&dir.path().join("long"), 90);
    synth(&short).unwrap();
    synth(&long).unwrap();
    for split in [Split::Train, Split::Val] {
        let a = read_split(&short.out.join(split.name()));
        let b = read_split(&long.out.join(split.name()));
        assert!(b.len() > a.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.record.index, y.record.index);
            assert_eq!(x.image, y.image);
            assert_eq!(x.json, y.json);
            assert_eq!(x.caption, y.caption);
        }
    }
}

#[test]
fn holdout_combos_leave_train_and_val() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&dir.path().join("w"), 400);
    o.holdout = "Purple Triangle, red circle,".into();
    o.two_object_fraction = 0.5;
    o.val_fraction = 0.2;
    let report = synth(&o).unwrap();
    let combos = parse_holdout(&o.holdout).unwrap();
    assert_eq!(combos.len(), 2);
    let held = |r: &SampleRecord| {
        r.scene
            .objects
            .iter()
            .any(|ob| combos.contains(&(ob.color, ob.shape)))
    };
    let mut counts = SplitCounts::default();
    for split in Split::ALL {
        let samples = read_split(&o.out.join(split.name()));
        for s in &samples {
            assert_eq!(s.record.split, split);
            assert_eq!(held(&s.record), split == Split::Holdout, "{:?}", s.record);
            counts.add(split);
        }
    }
    assert_eq!(counts, report.counts);
    assert!(
        counts.holdout > 5 && counts.val > 30 && counts.train > 200,
        "{counts:?}"
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.manifest).unwrap()).unwrap();
    assert_eq!(manifest["counts"]["holdout"], counts.holdout);
    assert_eq!(manifest["holdout_combos"][0], "purple triangle");
    assert_eq!(
        manifest["palette"]["purple"],
        serde_json::json!([150, 40, 210])
    );
}

#[test]
fn holdout_parsing_explains_mistakes() {
    assert_eq!(parse_holdout("").unwrap(), vec![]);
    let err = parse_holdout("pink circle").unwrap_err().to_string();
    assert!(err.contains("pink") && err.contains("purple"), "{err}");
    let err = parse_holdout("red").unwrap_err().to_string();
    assert!(err.contains("<color> <shape>"), "{err}");
    let err = parse_holdout("red hexagon").unwrap_err().to_string();
    assert!(err.contains("triangle"), "{err}");
}

/// The caption names exactly the colours, shapes, sizes, positions and relation of the scene.
fn check_caption(r: &SampleRecord) {
    let c = &r.caption;
    let words: Vec<&str> = c.split_whitespace().collect();
    let colors: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| Color::from_name(w).is_some())
        .collect();
    let shapes: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| Shape::from_name(w).is_some())
        .collect();
    let objs = &r.scene.objects;
    assert_eq!(
        colors,
        objs.iter().map(|o| o.color.name()).collect::<Vec<_>>(),
        "{c}"
    );
    assert_eq!(
        shapes,
        objs.iter().map(|o| o.shape.name()).collect::<Vec<_>>(),
        "{c}"
    );
    match (&objs[..], r.scene.relation) {
        ([o], None) => {
            assert!(words.contains(&o.size.name()), "{c}");
            assert!(
                position_phrases(o.position).iter().any(|p| c.contains(p)),
                "{c} vs {:?}",
                o.position
            );
        }
        ([a, b], Some(rel)) => {
            let phrase = relation_phrase(rel);
            let at = c
                .find(phrase)
                .unwrap_or_else(|| panic!("{c} lacks {phrase}"));
            assert!(c[..at].contains(a.shape.name()) && c[at..].contains(b.shape.name()));
            let sizes = words
                .iter()
                .filter(|w| ["small", "large"].contains(w))
                .count();
            assert!(sizes == 0 || sizes == 2, "{c}");
            if sizes == 2 {
                assert!(c[..at].contains(a.size.name()) && c[at..].contains(b.size.name()));
            }
            // No other relation phrase sneaks in.
            for other in Relation::ALL.into_iter().filter(|o| *o != rel) {
                assert!(!c.contains(relation_phrase(other)), "{c}");
            }
        }
        _ => panic!("bad scene {r:?}"),
    }
}

/// Pixels farther than this from the background colour belong to an object.
const OBJECT_DISTANCE: f64 = 80.0;

fn far_from(p: [u8; 3], bg: [u8; 3]) -> bool {
    let d2: f64 = (0..3).map(|k| (p[k] as f64 - bg[k] as f64).powi(2)).sum();
    d2.sqrt() > OBJECT_DISTANCE
}

/// What a scorer measures of one object.
struct Measured {
    mean_rgb: [f64; 3],
    centroid: (f64, f64),
    pixels: f64,
    /// max(width, height) of the object's pixels.
    extent: f64,
}

/// Measure the object pixels inside each object's bounding circle; panics on an object pixel
/// outside every circle.
fn measure(img: &image::RgbImage, r: &SampleRecord) -> Vec<Measured> {
    let objs = &r.scene.objects;
    let mut acc = vec![([0.0; 3], 0.0, 0.0, 0.0); objs.len()];
    let mut bbox = vec![[f64::MAX, f64::MAX, f64::MIN, f64::MIN]; objs.len()];
    for (x, y, p) in img.enumerate_pixels() {
        if !far_from(p.0, r.scene.background_rgb) {
            continue;
        }
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        let owner = objs
            .iter()
            .position(|o| (o.center_x - px).hypot(o.center_y - py) <= o.size_px / 2.0 + 0.75)
            .unwrap_or_else(|| panic!("object pixel ({x}, {y}) outside every object: {r:?}"));
        let a = &mut acc[owner];
        for k in 0..3 {
            a.0[k] += p[k] as f64;
        }
        a.1 += px;
        a.2 += py;
        a.3 += 1.0;
        let b = &mut bbox[owner];
        *b = [b[0].min(px), b[1].min(py), b[2].max(px), b[3].max(py)];
    }
    acc.into_iter()
        .zip(bbox)
        .map(|((c, x, y, n), b)| Measured {
            mean_rgb: c.map(|v| v / n),
            centroid: (x / n, y / n),
            pixels: n,
            extent: (b[2] - b[0]).max(b[3] - b[1]) + 1.0,
        })
        .collect()
}

#[test]
fn captions_and_pixels_match_the_ground_truth() {
    for (size, format) in [
        (64, ImageFormat::Png),
        (32, ImageFormat::Png),
        (64, ImageFormat::Jpg),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path(), 300);
        o.size = size;
        o.format = format;
        o.two_object_fraction = 0.4;
        synth(&o).unwrap();
        let samples = read_split(&o.out.join("train"));
        assert!(samples.len() > 250);
        let mut pairs = 0;
        for s in &samples {
            let r = &s.record;
            assert_eq!(s.caption, r.caption);
            assert_eq!(s.image_ext, format.ext());
            check_caption(r);
            let img = image::load_from_memory(&s.image).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (size, size));
            let measured = measure(&img, r);
            for (ob, m) in r.scene.objects.iter().zip(measured) {
                let (mean, (cx, cy)) = (m.mean_rgb, m.centroid);
                assert!(m.pixels > 4.0, "{r:?}");
                assert_eq!(Color::nearest(mean), ob.color, "{mean:?} in {r:?}");
                // The size class is readable from the extent once the shape is known.
                let diameter = m.extent / ob.shape.extent_ratio() / size as f64;
                let size_class = if diameter < 0.31 {
                    SizeClass::Small
                } else {
                    SizeClass::Large
                };
                assert_eq!(size_class, ob.size, "diameter {diameter} in {r:?}");
                assert!((cx - ob.center_x).abs() < 0.6, "{cx} in {r:?}");
                assert!((cy - ob.center_y).abs() < 0.6, "{cy} in {r:?}");
                if r.scene.objects.len() == 1 {
                    assert_eq!(Position::of_point(cx, cy, size), ob.position, "{r:?}");
                }
            }
            if let [a, b] = &r.scene.objects[..] {
                pairs += 1;
                let dist = (a.center_x - b.center_x).hypot(a.center_y - b.center_y);
                assert!(dist > (a.size_px + b.size_px) / 2.0, "{r:?}");
            }
        }
        assert!(pairs > 60, "{pairs}");
    }
}

#[test]
fn refuses_to_mix_with_old_shards_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), 40);
    synth(&o).unwrap();
    let err = synth(&o).unwrap_err().to_string();
    assert!(err.contains("--overwrite"), "{err}");
    o.overwrite = true;
    o.count = 10;
    let report = synth(&o).unwrap();
    assert_eq!(report.shards["train"].len(), 1);
    let tars = std::fs::read_dir(dir.path().join("train"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "tar")
        })
        .count();
    assert_eq!(tars, 1);
}
