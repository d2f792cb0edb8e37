use super::*;
use crate::shard_writer::read_members;
use image::{Rgb, RgbImage};
use std::path::Path;

fn write_image(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_pixel(w, h, Rgb(rgb));
    let ext = path.extension().unwrap().to_string_lossy().to_lowercase();
    let format = if ext == "png" {
        ImageFormat::Png
    } else {
        ImageFormat::Jpg
    };
    std::fs::write(path, encode_rgb(&img, format, 95).unwrap()).unwrap();
}

/// A folder with three good images (one in a subfolder, one with an upper-case extension), a
/// corrupt image, an image without caption, and files pack must ignore.
fn fixture_folder(root: &Path) {
    write_image(&root.join("a.png"), 100, 50, [200, 30, 30]);
    std::fs::write(root.join("a.txt"), "a red rectangle\n").unwrap();
    write_image(&root.join("F.JPG"), 60, 60, [30, 200, 30]);
    std::fs::write(root.join("F.txt"), "a green square").unwrap();
    write_image(&root.join("sub/b.jpg"), 40, 80, [30, 30, 200]);
    std::fs::write(root.join("sub/b.txt"), "  a blue column ").unwrap();
    std::fs::write(root.join("c.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    std::fs::write(root.join("c.txt"), "corrupt").unwrap();
    write_image(&root.join("d.png"), 20, 20, [0, 0, 0]);
    std::fs::write(root.join("notes.md"), "not an image").unwrap();
    write_image(&root.join(".hidden.png"), 20, 20, [0, 0, 0]);
    std::fs::write(root.join(".hidden.txt"), "hidden").unwrap();
}

/// (key, image ext, image bytes, caption, record) of every sample of every shard, in order.
fn read_samples(shards: &[PathBuf]) -> Vec<(String, String, Vec<u8>, String, PackedRecord)> {
    let mut out = Vec::new();
    for shard in shards {
        let members = read_members(shard).unwrap();
        for chunk in members.chunks(3) {
            let [(img_name, img), (txt_name, txt), (json_name, json)] = chunk else {
                panic!("incomplete sample in {}", shard.display());
            };
            let (key, ext) = img_name.split_once('.').unwrap();
            assert_eq!(txt_name, &format!("{key}.txt"));
            assert_eq!(json_name, &format!("{key}.json"));
            let record: PackedRecord = serde_json::from_slice(json).unwrap();
            assert_eq!(record.key, key);
            let caption = String::from_utf8(txt.clone()).unwrap();
            assert_eq!(record.caption, caption);
            out.push((key.into(), ext.into(), img.clone(), caption, record));
        }
    }
    out
}

#[test]
fn folder_skips_and_counts_bad_inputs_and_sizes_by_mode() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fixture_folder(&input);
    let modes = [
        (ResizeMode::Border, [(32, 32), (32, 32), (32, 32)]),
        (ResizeMode::KeepRatio, [(32, 32), (64, 32), (32, 64)]),
        (ResizeMode::CenterCrop, [(32, 32), (32, 32), (32, 32)]),
        (ResizeMode::No, [(60, 60), (100, 50), (40, 80)]),
    ];
    for (mode, sizes) in modes {
        let mut o = PackOptions::new(&input, dir.path().join(format!("out-{mode:?}")));
        o.samples_per_shard = 2;
        o.image_size = 32;
        o.resize_mode = mode;
        let report = pack(&o).unwrap();
        assert_eq!(report.inputs, 5);
        assert_eq!(report.written, 3);
        assert_eq!(report.skipped[FAILED_TO_DECODE], 1);
        assert_eq!(report.skipped[MISSING_CAPTION], 1);
        assert!(report.skipped_examples[FAILED_TO_DECODE][0].starts_with("c.png: "));
        assert_eq!(report.shards.len(), 2);

        let samples = read_samples(&report.shards);
        let keys: Vec<&str> = samples.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(keys, ["000000000", "000000001", "000010000"]);
        let paths: Vec<&str> = samples.iter().map(|s| s.4.original_path.as_str()).collect();
        assert_eq!(paths, ["F.JPG", "a.png", "sub/b.jpg"]);
        let captions: Vec<&str> = samples.iter().map(|s| s.3.as_str()).collect();
        assert_eq!(
            captions,
            ["a green square", "a red rectangle", "a blue column"]
        );
        let originals = [(60, 60), (100, 50), (40, 80)];
        for ((_, ext, bytes, _, record), (size, original)) in
            samples.iter().zip(sizes.iter().zip(originals))
        {
            let img = image::load_from_memory(bytes).unwrap();
            assert_eq!((img.width(), img.height()), *size, "{mode:?} {record:?}");
            assert_eq!((record.width, record.height), *size);
            assert_eq!((record.original_width, record.original_height), original);
            if mode == ResizeMode::No {
                let source = std::fs::read(input.join(&record.original_path)).unwrap();
                assert_eq!(bytes, &source);
                let want = if record.original_path.ends_with("png") {
                    "png"
                } else {
                    "jpg"
                };
                assert_eq!(ext, want);
            } else {
                assert_eq!(ext, "jpg");
            }
        }

        // Skips are counted against the shard that was open when they happened.
        let stats: serde_json::Value =
            serde_json::from_slice(&std::fs::read(o.out.join("00001_stats.json")).unwrap())
                .unwrap();
        assert_eq!(stats["count"], 3);
        assert_eq!(stats["successes"], 1);
        assert_eq!(stats[FAILED_TO_DECODE], 1);
        assert_eq!(stats[MISSING_CAPTION], 1);
    }
}

#[test]
fn border_pads_with_white_and_png_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_image(&input.join("wide.png"), 64, 32, [200, 30, 30]);
    std::fs::write(input.join("wide.txt"), "wide").unwrap();
    let mut o = PackOptions::new(&input, dir.path().join("out"));
    o.image_size = 16;
    o.format = ImageFormat::Png;
    let report = pack(&o).unwrap();
    let samples = read_samples(&report.shards);
    assert_eq!(samples[0].1, "png");
    let img = image::load_from_memory(&samples[0].2).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (16, 16));
    // 64x32 → 16x8, rows 4..12 hold the image.
    for y in 0..16 {
        let want = if (4..12).contains(&y) {
            [200, 30, 30]
        } else {
            BORDER_RGB
        };
        assert_eq!(img.get_pixel(8, y).0, want, "row {y}");
    }
}

#[test]
fn csv_and_tsv_tables() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write_image(&root.join("imgs/a.png"), 30, 20, [10, 10, 10]);
    write_image(&root.join("imgs/b.jpg"), 20, 30, [250, 250, 250]);
    std::fs::write(
        root.join("list.csv"),
        "id,image,caption\n\
         1,imgs/b.jpg,\"a caption, with a comma\"\n\
         2,imgs/missing.png,nothing there\n\
         3,imgs/a.png,\n\
         4,imgs/a.png,a dark image\n",
    )
    .unwrap();
    let mut o = PackOptions::new(root.join("list.csv"), dir.path().join("csv-out"));
    o.image_size = 16;
    o.resize_mode = ResizeMode::CenterCrop;
    let report = pack(&o).unwrap();
    assert_eq!(report.inputs, 4);
    assert_eq!(report.written, 2);
    assert_eq!(report.skipped[FAILED_TO_READ], 1);
    assert_eq!(report.skipped[MISSING_CAPTION], 1);
    let samples = read_samples(&report.shards);
    assert_eq!(samples[0].3, "a caption, with a comma");
    assert_eq!(samples[0].4.original_path, "imgs/b.jpg");
    assert_eq!(samples[1].3, "a dark image");
    assert_eq!(
        (samples[1].4.original_width, samples[1].4.original_height),
        (30, 20)
    );

    std::fs::write(
        root.join("list.tsv"),
        "file\tdesc\n imgs/a.png \ta \"quoted\" word\n",
    )
    .unwrap();
    let mut o = PackOptions::new(root.join("list.tsv"), dir.path().join("tsv-out"));
    let err = pack(&o).unwrap_err().to_string();
    assert!(
        err.contains("path or image or filepath") && err.contains("file, desc"),
        "{err}"
    );
    o.path_column = Some("file".into());
    o.caption_column = Some("desc".into());
    let report = pack(&o).unwrap();
    let samples = read_samples(&report.shards);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].3, "a \"quoted\" word");
    assert_eq!((samples[0].4.width, samples[0].4.height), (256, 256));
}

#[test]
fn output_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    for i in 0..40u32 {
        write_image(
            &input.join(format!("{i:03}.png")),
            20 + i,
            50 - i,
            [i as u8 * 6, 100, 50],
        );
        std::fs::write(input.join(format!("{i:03}.txt")), format!("image {i}")).unwrap();
    }
    let mut shards = Vec::new();
    for threads in [1, 3] {
        let mut o = PackOptions::new(&input, dir.path().join(format!("out{threads}")));
        o.threads = threads;
        o.samples_per_shard = 16;
        o.image_size = 24;
        let report = pack(&o).unwrap();
        assert_eq!(report.written, 40);
        let bytes: Vec<Vec<u8>> = report
            .shards
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        shards.push(bytes);
    }
    assert_eq!(shards[0].len(), 3);
    assert_eq!(shards[0], shards[1]);
}
