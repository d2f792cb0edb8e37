//! `unclip data …` and `unclip bench data` end to end, through the real binary.

use serde_json::Value;
use unclip_tests::{unclip, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn json(s: &str) -> Value {
    serde_json::from_str(s.lines().last().expect("a JSON line")).expect("valid JSON")
}

#[test]
fn synth_then_inspect_counts_every_sample_and_draws_a_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shapes");
    let out_s = out.to_str().unwrap();
    let report = json(&unclip_ok(
        BIN,
        &[
            "data",
            "synth",
            "--out",
            out_s,
            "--count",
            "120",
            "--size",
            "32",
            "--samples-per-shard",
            "50",
            "--holdout",
            "red circle",
        ],
    ));
    let train = report["counts"]["train"].as_u64().unwrap();
    assert!(train > 80, "{report}");
    let sheet = dir.path().join("sheet.png");
    let inspected = json(&unclip_ok(
        BIN,
        &[
            "data",
            "inspect",
            &format!("{out_s}/train"),
            "--json",
            "-k",
            "8",
            "--contact-sheet",
            sheet.to_str().unwrap(),
        ],
    ));
    assert_eq!(inspected["samples"].as_u64(), Some(train), "{inspected}");
    assert_eq!(inspected["bad"], serde_json::json!({}));
    assert_eq!(inspected["image_sizes"]["32x32"].as_u64(), Some(train));
    let img = image::open(&sheet).unwrap();
    assert!(img.width() > 8 * 32 && img.height() > 96);
    // The human-readable form names the same figures, and without `--contact-sheet` nothing
    // is written, not even into the current folder.
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["data", "inspect", &format!("{out_s}/train")])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("good samples     {train}")),
        "{text}"
    );
    let written: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(written.is_empty(), "inspect wrote {written:?}");
    // A contact sheet never replaces a shard it reads.
    let shard = out_s.to_owned() + "/train/00000.tar";
    let before = std::fs::read(&shard).unwrap();
    let refused = unclip(BIN, &["data", "inspect", &shard, "--contact-sheet", &shard]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("names one of the shards"));
    assert_eq!(std::fs::read(&shard).unwrap(), before);
    // Nor any other file that is not an earlier contact sheet.
    let notes = cwd.path().join("notes.txt");
    std::fs::write(&notes, "keep").unwrap();
    let refused = unclip(
        BIN,
        &[
            "data",
            "inspect",
            &shard,
            "--contact-sheet",
            notes.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a PNG image"));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep");
}

#[test]
fn synth_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = dir.path().join(name);
        unclip_ok(
            BIN,
            &[
                "data",
                "synth",
                "--out",
                out.to_str().unwrap(),
                "--count",
                "60",
                "--size",
                "24",
                "--seed",
                "5",
            ],
        );
        std::fs::read(out.join("train/00000.tar")).unwrap()
    };
    assert_eq!(run("a"), run("b"));
}

#[test]
fn pack_skips_and_counts_bad_inputs_and_inspect_reads_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for i in 0..5u8 {
        let img = image::RgbImage::from_pixel(40 + i as u32, 30, image::Rgb([i * 40, 100, 200]));
        img.save(input.join(format!("img{i}.png"))).unwrap();
        std::fs::write(
            input.join(format!("img{i}.txt")),
            format!("picture number {i}"),
        )
        .unwrap();
    }
    std::fs::write(input.join("broken.jpg"), b"\xff\xd8\xff not a jpeg").unwrap();
    std::fs::write(input.join("broken.txt"), b"a broken image").unwrap();
    image::RgbImage::new(8, 8)
        .save(input.join("nocaption.png"))
        .unwrap();
    let out = dir.path().join("packed");
    let report = json(&unclip_ok(
        BIN,
        &[
            "data",
            "pack",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--image-size",
            "16",
            "--resize-mode",
            "center_crop",
            "--samples-per-shard",
            "2",
        ],
    ));
    assert_eq!(report["written"].as_u64(), Some(5), "{report}");
    let skipped: u64 = report["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(skipped, 2, "{report}");
    let inspected = json(&unclip_ok(
        BIN,
        &[
            "data",
            "inspect",
            out.to_str().unwrap(),
            "--json",
            "-k",
            "0",
        ],
    ));
    assert_eq!(inspected["samples"].as_u64(), Some(5), "{inspected}");
    assert_eq!(
        inspected["image_sizes"]["16x16"].as_u64(),
        Some(5),
        "{inspected}"
    );
    assert_eq!(inspected["shards"].as_u64(), Some(3));
}

#[test]
fn inspect_reports_corrupt_shards_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    unclip_ok(
        BIN,
        &[
            "data",
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--count",
            "30",
            "--size",
            "16",
        ],
    );
    std::fs::write(out.join("train/00001.tar"), b"garbage, not a tar").unwrap();
    let inspected = json(&unclip_ok(
        BIN,
        &[
            "data",
            "inspect",
            out.join("train").to_str().unwrap(),
            "--json",
            "-k",
            "0",
        ],
    ));
    assert_eq!(
        inspected["bad"]["corrupt_tar"].as_u64(),
        Some(1),
        "{inspected}"
    );
}

#[test]
fn a_spec_that_matches_nothing_is_a_clear_error() {
    let out = unclip(
        BIN,
        &[
            "data",
            "inspect",
            "/nonexistent/{00000..00003}.tar",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/00000.tar") && err.contains("matches no file"),
        "{err}"
    );
    // Usage errors exit with 2.
    assert_eq!(unclip(BIN, &["data", "inspect"]).status.code(), Some(2));
}

#[test]
fn bench_data_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let synth = json(&unclip_ok(
        BIN,
        &[
            "data",
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--count",
            "100",
            "--size",
            "64",
            "--format",
            "jpg",
            "--val-fraction",
            "0",
        ],
    ));
    let line = unclip_ok(
        BIN,
        &[
            "bench",
            "data",
            "--shards",
            out.join("train").to_str().unwrap(),
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--workers",
            "2",
        ],
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    let r = json(&line);
    assert_eq!(r["images"], synth["counts"]["train"], "{r}");
    assert!(r["images_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["skipped"].as_u64(), Some(0));
}
