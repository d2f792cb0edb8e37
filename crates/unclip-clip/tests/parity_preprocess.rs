//! Preprocessing against transformers' `CLIPImageProcessorPil` (PIL bicubic) at size 64 on the
//! fixture PNGs (wide, tall, downscaled, upscaled): every value within 2/255 in pixel units.

mod common;

use common::fixture;
use safetensors::SafeTensors;
use unclip_clip::{preprocess, CLIP_STD};

#[test]
fn pixel_values_match_clip_image_processor() {
    let bytes = std::fs::read(fixture("preprocess/expected.safetensors")).expect("fixture exists");
    let expected = SafeTensors::deserialize(&bytes).expect("fixture is safetensors");
    let mut worst = 0.0f32;
    for name in ["wide", "tall", "big", "small"] {
        let img = image::open(fixture(&format!("preprocess/{name}.png")))
            .expect("png decodes")
            .to_rgb8();
        let ours = preprocess(&img, 64).expect("preprocesses");
        let view = expected.tensor(name).expect("expected tensor");
        assert_eq!(view.shape(), [3, 64, 64]);
        let theirs: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let plane = 64 * 64;
        // Undo the std scaling so the difference is in [0, 1] pixel units.
        let diff = ours
            .iter()
            .zip(&theirs)
            .enumerate()
            .map(|(i, (a, b))| (a - b).abs() * CLIP_STD[i / plane])
            .fold(0.0, f32::max);
        println!("{name}: max |Δ| = {:.3}/255", diff * 255.0);
        worst = worst.max(diff);
    }
    assert!(
        worst <= 2.0 / 255.0 + 1e-6,
        "max |Δ| {:.3}/255",
        worst * 255.0
    );
}
