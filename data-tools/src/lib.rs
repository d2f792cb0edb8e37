//! Dataset building for `unclip data …`: everything that turns raw material into the tar shards
//! the loaders read.
//!
//! [`synth`] renders the *shapes world*, a seeded synthetic image–caption dataset whose every
//! caption word can be checked against the pixels (tests, the demo, evaluation); [`pack`] turns a
//! folder or CSV of images and captions into img2dataset-compatible shards; both write through
//! [`ShardWriter`]; [`inspect`] counts and draws what a set of shards holds; [`shapes`] is the
//! shapes world's vocabulary, scenes, captions and renderer (its pixel scorer is evaluation's,
//! in `unclip-eval`). Reading shards back for training lives in `unclip-data`, embedding them in
//! `unclip-embed`, not here. Every random choice comes from `unclip-rng` keyed by (seed, sample
//! index), and every file is written atomically through `unclip-fs`.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): before **data**:
//! it makes the shards.

pub mod encode;
pub mod inspect;
pub mod pack;
pub mod shapes;
pub mod shard_writer;
pub mod synth;

pub use encode::ImageFormat;
pub use inspect::{inspect, InspectOptions, InspectReport};
pub use pack::{pack, PackOptions, PackReport, ResizeMode};
pub use shard_writer::{read_members, shard_key, write_shard, ShardSummary, ShardWriter};
pub use synth::{synth, SynthOptions, SynthReport};

#[cfg(test)]
mod cli_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    enum Cli {
        Synth(SynthOptions),
        Pack(PackOptions),
    }

    #[test]
    fn options_parse_as_the_cli_will_flatten_them() {
        let Cli::Synth(s) = Cli::try_parse_from([
            "data",
            "synth",
            "--out",
            "d",
            "--holdout",
            "purple triangle,red circle",
            "--texture",
            "off",
            "--format",
            "jpg",
            "--size",
            "32",
        ])
        .unwrap() else {
            panic!("not synth")
        };
        assert_eq!(s.holdout, "purple triangle,red circle");
        assert!(!s.texture);
        assert_eq!(
            (s.format, s.size, s.count, s.quality),
            (ImageFormat::Jpg, 32, 2000, 95)
        );
        assert!(SynthOptions::new("d").texture);

        let Cli::Pack(p) = Cli::try_parse_from([
            "data",
            "pack",
            "--input",
            "x.csv",
            "--out",
            "o",
            "--resize-mode",
            "keep_ratio",
        ])
        .unwrap() else {
            panic!("not pack")
        };
        assert_eq!(p.resize_mode, ResizeMode::KeepRatio);
        assert_eq!((p.samples_per_shard, p.image_size), (10_000, 256));
        assert!(Cli::try_parse_from([
            "data",
            "pack",
            "--input",
            "x",
            "--out",
            "o",
            "--quality",
            "0"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["data", "synth", "--out", "o", "--samples-per-shard", "0"])
                .is_err()
        );
    }
}
