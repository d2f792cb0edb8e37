//! `unclip demo`: finished steps are recorded and skipped when the demo runs again, and a
//! folder made with `--quick` is not silently mixed with a full run.

use std::path::Path;

use serde_json::Value;
use unclip_tests::{unclip, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn finished_steps_are_skipped_and_modes_are_not_mixed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("demo");
    let args = ["demo", "--quick", "--until", "synth", "--out", s(&out)];
    let first: Value = serde_json::from_str(&unclip_ok(BIN, &args)).expect("json");
    let counts = &first["synth"]["counts"];
    assert!(counts["train"].as_u64().unwrap_or(0) > 3000, "{first}");
    assert!(counts["val"].as_u64().unwrap_or(0) > 0, "{first}");
    assert!(counts["holdout"].as_u64().unwrap_or(0) > 0, "{first}");
    let shard = out.join("data/train/00000.tar");
    let modified = std::fs::metadata(&shard)
        .and_then(|m| m.modified())
        .expect("shard");

    let again = unclip(BIN, &args);
    assert!(again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("synth: already done"), "{err}");
    let second: Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(first, second);
    let unchanged = std::fs::metadata(&shard)
        .and_then(|m| m.modified())
        .expect("shard");
    assert_eq!(modified, unchanged, "a finished step ran again");

    let full = unclip(BIN, &["demo", "--until", "synth", "--out", s(&out)]);
    assert_eq!(full.status.code(), Some(1));
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(err.contains("was made with --quick"), "{err}");
}

/// The whole quick demo, end to end, and the learning test of the prior on its embeddings (a
/// CLIP trained from scratch, its embeddings, a prior trained on them): on held-out captions
/// the prior's samples are closer to the true image embeddings than the text embedding and the
/// dataset mean are, shuffled captions do clearly worse, and retrieval among 64 is far above
/// chance. Then the decoder and upsampler train and export, the pipeline is assembled, `unclip
/// sample` draws from it reproducibly, and the evaluation report is written, with a colour
/// accuracy of at least twice chance on held-out captions and the decoder's learning test
/// (colour from real images' embeddings: guidance 3 > guidance 1 > swapped embeddings).
#[test]
fn quick_demo_runs_end_to_end_and_the_prior_beats_the_baselines() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("demo");
    let report: Value =
        serde_json::from_str(&unclip_ok(BIN, &["demo", "--quick", "--out", s(&out)]))
            .expect("json");
    let clip = &report["clip"]["validation"];
    let top1 = clip["i2t_top1"].as_f64().expect("i2t_top1");
    assert!(
        top1 > 5.0 * clip["chance_top1"].as_f64().expect("chance"),
        "{clip}"
    );
    let v = &report["prior"]["validation"];
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(f("cos_pred") > f("cos_text_baseline") + 0.1, "{v}");
    assert!(f("cos_pred") > f("cos_mean_baseline") + 0.05, "{v}");
    assert!(f("cos_shuffled") < f("cos_pred") - 0.2, "{v}");
    assert!(f("retrieval_top1") > 8.0 / 64.0, "{v}");
    for dir in [
        "clip",
        "prior",
        "decoder",
        "upsampler",
        "pipeline/upsampler-1",
        "embeddings/train",
        "embeddings/val",
        "embeddings/holdout",
    ] {
        assert!(out.join(dir).is_dir(), "{dir} missing");
    }
    // The upsampler's learning test, on held-out images after its short run: the x̂0 at
    // t = T/2 beats bicubic upsampling and the untrained network; the full DDIM-27 samples
    // are sharper at the objects' edges than bicubic, with a PSNR no worse than bicubic − 1 dB.
    let u = &report["upsampler"]["validation"];
    let g = |k: &str| u[k].as_f64().unwrap_or_else(|| panic!("{k} in {u}"));
    assert!(g("psnr_x0_mid") > g("psnr_bicubic"), "{u}");
    assert!(g("psnr_x0_mid") > g("psnr_x0_mid_init"), "{u}");
    assert!(g("psnr_sample") >= g("psnr_bicubic") - 1.0, "{u}");
    assert!(g("edge_energy_sample") > g("edge_energy_bicubic"), "{u}");
    assert_eq!(report["assemble"]["sides"], serde_json::json!([32, 64]));
    // The evaluation: every figure is a fraction, the files are there.
    let e = &report["eval"];
    for set in ["single", "pairs", "holdout"] {
        for k in ["color", "shape"] {
            let x = e[set][k].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&x), "{set}.{k} in {e}");
        }
    }
    assert!(e["sweep"].as_array().is_some_and(|a| a.len() == 4), "{e}");
    // The decoder draws the caption's colour well above chance even after the quick run.
    let colour = e["single"]["color"].as_f64().unwrap_or(0.0);
    let chance = e["chance_color"].as_f64().expect("chance");
    assert!(
        colour >= 2.0 * chance,
        "colour accuracy {colour} < 2 × chance: {e}"
    );
    // The decoder's learning test: fed the CLIP embeddings of held-out images (two of each
    // palette colour) with their captions, it draws the object in the image's colour more often
    // at guidance 3 than at guidance 1, and more often at guidance 1 than with the embeddings
    // swapped between colours (at guidance 3).
    let dc = &e["decoder_colors"];
    let d = |k: &str| dc[k].as_f64().unwrap_or_else(|| panic!("{k} in {dc}"));
    assert_eq!(dc["colors"].as_f64(), Some((1.0 / chance).round()), "{dc}");
    assert_eq!(
        dc["images"].as_f64(),
        Some(2.0 * (1.0 / chance).round()),
        "{dc}"
    );
    assert!(
        d("guidance_3") > d("guidance_1"),
        "guidance 3 ≤ guidance 1: {dc}"
    );
    assert!(
        d("guidance_1") > d("shuffled"),
        "guidance 1 ≤ swapped embeddings: {dc}"
    );
    for k in ["shape_guidance_1", "shape_guidance_3"] {
        assert!((0.0..=1.0).contains(&d(k)), "{k} in {dc}");
    }
    // The shape split by the real object's size covers every scored image (the scorer reads
    // an object off every real image).
    let by = &e["single"]["shape_by_size"];
    let n = |k: &str| by[k].as_f64().unwrap_or_else(|| panic!("{k} in {by}"));
    assert_eq!(
        Some(n("small_images") + n("large_images")),
        e["single"]["images"].as_f64(),
        "{by}"
    );
    // The frozen CLIP tells colours apart zero-shot (the quick CLIP: 100 % on 2026-12-07).
    let zs = &e["clip_zero_shot"];
    let z = |k: &str| zs[k].as_f64().unwrap_or_else(|| panic!("{k} in {zs}"));
    assert!(z("color") >= 4.0 * chance, "{zs}");
    assert!((0.0..=1.0).contains(&z("shape")), "{zs}");
    for f in [
        "report.md",
        "report.json",
        "single.png",
        "guidance_sweep.png",
    ] {
        assert!(out.join("report").join(f).is_file(), "{f} missing");
    }
    // `unclip sample`: text → 64 px images, the same again with the same seed.
    let pipeline = out.join("pipeline");
    let grid = |name: &str, seed: &str| {
        let png = tmp.path().join(name);
        unclip_ok(
            BIN,
            &[
                "sample",
                "--pipeline",
                s(&pipeline),
                "--prompt",
                "a red square",
                "-n",
                "2",
                "--seed",
                seed,
                "--quiet",
                "--out",
                s(&png),
            ],
        );
        std::fs::read(png).expect("png")
    };
    let (a, b, c) = (grid("a.png", "1"), grid("b.png", "1"), grid("c.png", "2"));
    assert_eq!(a, b, "same seed, different images");
    assert_ne!(a, c, "another seed gave the same images");
    let img = image::load_from_memory(&a).expect("png").to_rgb8();
    // Two 64 px images side by side with 2 px borders.
    assert_eq!(img.dimensions(), (2 * 66 + 2, 66 + 2));
    // Variations of a held-out image, and a 3-point interpolation between two captions.
    let truth = tmp.path().join("truth.png");
    report::first_val_png(&out.join("data/val"), &truth);
    let var = tmp.path().join("var.png");
    unclip_ok(
        BIN,
        &[
            "sample",
            "--pipeline",
            s(&pipeline),
            "--image",
            s(&truth),
            "-n",
            "2",
            "--quiet",
            "--out",
            s(&var),
        ],
    );
    let var = image::open(&var).expect("png").to_rgb8();
    assert_eq!(var.dimensions(), (2 * 66 + 2, 66 + 2));
    let path = tmp.path().join("interp.png");
    unclip_ok(
        BIN,
        &[
            "sample",
            "--pipeline",
            s(&pipeline),
            "--prompt",
            "a red square",
            "--prompt",
            "a blue circle",
            "--interpolate",
            "-n",
            "3",
            "--quiet",
            "--out",
            s(&path),
        ],
    );
    let interp = image::open(&path).expect("png").to_rgb8();
    assert_eq!(interp.dimensions(), (3 * 66 + 2, 66 + 2));
    // The two ends differ: the path really moves between the captions' embeddings.
    let cell = |i: u32| image::imageops::crop_imm(&interp, 2 + i * 66, 2, 64, 64).to_image();
    assert_ne!(cell(0).into_raw(), cell(2).into_raw());
    // An evaluation with nothing to score is a clear error, not a panic.
    let empty = unclip(
        BIN,
        &[
            "eval",
            "--pipeline",
            s(&out.join("pipeline")),
            "--data",
            s(&out.join("data")),
            "--out",
            s(&tmp.path().join("empty-eval")),
            "--captions",
            "0",
            "--pairs",
            "0",
            "--holdout",
            "0",
        ],
    );
    assert_eq!(empty.status.code(), Some(1));
    let err = String::from_utf8_lossy(&empty.stderr);
    assert!(
        err.contains("--captions must be at least 1") && !err.contains("panicked"),
        "{err}"
    );
}

mod report {
    use std::path::Path;

    /// Writes the first PNG of the first shard in `val` to `out`.
    pub fn first_val_png(val: &Path, out: &Path) {
        let shard = val.join("00000.tar");
        let members = unclip_data_tools::read_members(&shard).expect("shard");
        let (_, bytes) = members
            .iter()
            .find(|(name, _)| name.ends_with(".png"))
            .unwrap_or_else(|| panic!("no png in {}", shard.display()));
        std::fs::write(out, bytes).expect("write");
    }
}
