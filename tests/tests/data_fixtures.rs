//! The loader against shards and pixels written by the reference tools (webdataset's
//! `TarWriter`, img2dataset, torchvision), from fixtures made by
//! `tests/reference/make_data_fixtures.py`.

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use unclip_data::transform::{DecodedSample, Example, Field, SampleContext, TransformError};
use unclip_data::{
    CaptionSource, ImageTransform, Loader, LoaderConfig, Partition, SampleTransform,
};
use unclip_tests::fixtures;

/// Keeps what the fixtures describe: size and pixel (0, 0).
struct Probe;

impl SampleTransform for Probe {
    fn apply(&self, s: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let img = s.decode()?;
        let p = img.get_pixel(0, 0).0;
        Ok(Example {
            key: s.key,
            caption: s.caption,
            index: ctx.index,
            fields: vec![Field {
                name: "probe".into(),
                shape: vec![5],
                data: vec![
                    img.width() as f32,
                    img.height() as f32,
                    p[0] as f32,
                    p[1] as f32,
                    p[2] as f32,
                ],
            }],
        })
    }
}

fn read_all(
    spec: &Path,
    caption: CaptionSource,
    require_caption: bool,
) -> Vec<(String, Option<String>, Vec<f32>)> {
    let mut c = LoaderConfig::new(spec.to_string_lossy(), 1);
    c.shuffle = false;
    c.drop_last = false;
    c.epochs = Some(1);
    c.caption = caption;
    c.require_caption = require_caption;
    let mut l = Loader::new(c, Partition::SINGLE, Arc::new(Probe), None).unwrap();
    let mut out = Vec::new();
    while let Some(b) = l.next_batch().unwrap() {
        out.push((
            b.keys[0].clone(),
            b.captions[0].clone(),
            b.field("probe").unwrap().data.clone(),
        ));
    }
    assert!(l.summary().skipped.is_empty(), "{:?}", l.summary());
    out
}

fn check_against_expected(dir: &str, tar: &str, jpeg_tolerance: f32) {
    let root = fixtures().join("data").join(dir);
    let expected: Value =
        serde_json::from_slice(&std::fs::read(root.join("expected.json")).unwrap()).unwrap();
    let samples = expected["samples"].as_array().unwrap();
    let shard = root.join(tar);

    // Grouping: keys and extension sets, in order.
    let mut groups = Vec::new();
    unclip_data::shard::read_shard(&shard, 0, &mut |item| {
        if let unclip_data::shard::ShardItem::Sample(s) = item {
            let mut exts: Vec<String> = s.members.iter().map(|m| m.ext.clone()).collect();
            exts.sort();
            groups.push((s.key, exts));
        }
        true
    });
    let want: Vec<(String, Vec<String>)> = samples
        .iter()
        .map(|s| {
            let exts = s["extensions"].as_array().unwrap();
            (
                s["__key__"].as_str().unwrap().to_string(),
                exts.iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(groups, want);

    // Decoding and captions, from .txt and from the .json field.
    for (source, field) in [
        (CaptionSource::Txt, "caption_txt"),
        (CaptionSource::Json("caption".into()), "caption_json"),
    ] {
        let got = read_all(&shard, source, false);
        assert_eq!(got.len(), samples.len());
        for ((key, caption, probe), s) in got.iter().zip(samples) {
            assert_eq!(key, s["__key__"].as_str().unwrap());
            assert_eq!(caption.as_deref(), s[field].as_str(), "{key} {field}");
            assert_eq!(probe[0], s["width"].as_f64().unwrap() as f32, "{key}");
            assert_eq!(probe[1], s["height"].as_f64().unwrap() as f32, "{key}");
            let tol = if s["image_ext"] == "png" {
                0.0
            } else {
                jpeg_tolerance
            };
            for c in 0..3 {
                let want = s["pixel00_rgb"][c].as_f64().unwrap() as f32;
                assert!(
                    (probe[2 + c] - want).abs() <= tol,
                    "{key}: pixel {probe:?} vs {want}"
                );
            }
        }
    }
}

#[test]
fn reads_webdataset_tarwriter_shards() {
    check_against_expected("webdataset", "shard-000000.tar", 2.0);
    // The sample without a .txt is skipped and counted when captions are required.
    let mut c = LoaderConfig::new(
        fixtures()
            .join("data/webdataset/shard-000000.tar")
            .to_string_lossy(),
        1,
    );
    c.shuffle = false;
    c.drop_last = false;
    c.epochs = Some(1);
    let mut l = Loader::new(c, Partition::SINGLE, Arc::new(Probe), None).unwrap();
    while l.next_batch().unwrap().is_some() {}
    assert_eq!(l.summary().skipped.get("missing_caption"), Some(&1));
    assert_eq!(l.summary().samples, 5);
}

#[test]
fn reads_img2dataset_shards() {
    check_against_expected("img2dataset", "00000.tar", 6.0);
}

fn safetensor_f32(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn transform_matches_torchvision_within_two_levels() {
    let root = fixtures().join("data/transform");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(root.join("expected.json")).unwrap()).unwrap();
    let bytes = std::fs::read(root.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut checked, mut reduced) = (0, 0);
    for t in meta["tensors"].as_array().unwrap() {
        let name = t["tensor"].as_str().unwrap();
        let source = t["source"].as_str().unwrap();
        let rgba_dropped = t["source_mode"] == "RGBA" && !name.ends_with(":composite_on_white");
        if rgba_dropped {
            continue; // PIL's convert("RGB") drops alpha; we composite on white (compared below)
        }
        let file = std::fs::read(root.join(source)).unwrap();
        let ext = source.rsplit('.').next().unwrap();
        let mut transform = ImageTransform::new(64);
        if name.ends_with(":resize80_crop64") {
            transform.resize_to = Some(80);
        }
        // The loader's own path: bytes in, normalised CHW out.
        let sample = DecodedSample {
            key: name.into(),
            shard: root.join(source).as_path().into(),
            caption: None,
            json_bytes: None,
            image_bytes: file,
            image_ext: ext.into(),
            max_pixels: u64::MAX,
        };
        let ctx = SampleContext {
            seed: 0,
            epoch: 0,
            index: 0,
        };
        // 256² JPEGs at 64 px take the reduced-scale decode (half size in the DCT domain):
        // this comparison is what bounds its error against torchvision's full decode.
        let reduction = sample
            .decode_for(transform.resize_short())
            .unwrap()
            .reduction;
        if ext == "jpg" && !name.starts_with("t06") {
            assert_eq!(reduction, 2, "{name}");
            reduced += 1;
        }
        let ex = transform.apply(sample, ctx).unwrap();
        let ours = &ex.fields[0].data;
        let want = safetensor_f32(&st, name);
        assert_eq!(ours.len(), want.len(), "{name}");
        // In 0..255 levels: values are in [-1, 1], so one level is 2/255.
        let levels: Vec<f32> = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() * 127.5)
            .collect();
        let mean = levels.iter().sum::<f32>() / levels.len() as f32;
        let max = levels.iter().cloned().fold(0.0, f32::max);
        eprintln!("{name}: mean |Δ| {mean:.3} levels, max {max:.1}");
        assert!(
            mean <= 2.0,
            "{name}: mean absolute difference {mean} levels > 2"
        );
        if reduction == 1 {
            // Decoded whole (JPEGs by libjpeg-turbo, Pillow's decoder): only resampling
            // rounding can differ.
            assert!(max <= 1.01, "{name}: max difference {max} levels");
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} fixtures checked");
    assert!(
        reduced >= 5,
        "only {reduced} fixtures took the reduced decode"
    );
}
