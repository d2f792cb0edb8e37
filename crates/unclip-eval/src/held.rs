//! The held-out shapes-world samples the evaluation captions and compares with: read in
//! order from a split's shards through the loader's own sample reading.

use std::path::{Path, PathBuf};

use image::RgbImage;
use unclip_data::sample::{read_sample, ReadOptions};
use unclip_data::shard::{read_shard, MemberReader, ShardItem};
use unclip_data::CaptionSource;
use unclip_data_tools::shapes::Color;
use unclip_infer::{pipeline_error, InferError};

use crate::shapes::{parse_caption, CaptionSpec};

/// A held-out sample: caption, its parsed attributes and the real image.
#[derive(Clone)]
pub(crate) struct Held {
    pub caption: String,
    pub spec: CaptionSpec,
    pub image: RgbImage,
}

/// The samples of every shard in `dir` (sorted), in order, up to `limit` matching `keep`
/// (none for a limit of 0: that part of the evaluation is skipped). Samples without a
/// caption of the shapes world's grammar, or whose image does not decode, are passed over.
pub(crate) fn read_split(
    dir: &Path,
    limit: usize,
    keep: impl Fn(&CaptionSpec) -> bool,
) -> Result<Vec<Held>, InferError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| pipeline_error(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    shards.sort();
    let opts = ReadOptions {
        caption: CaptionSource::Txt,
        require_caption: true,
        max_pixels: unclip_data::decode::DEFAULT_MAX_PIXELS,
    };
    let mut reader = MemberReader::default();
    let mut out = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let mut samples = Vec::new();
        read_shard(shard, i as u32, &mut |item| {
            if let ShardItem::Sample(s) = item {
                samples.push(s);
            }
            true
        });
        for raw in samples {
            let Ok((sample, _)) = read_sample(&shards, &opts, &mut reader, raw) else {
                continue;
            };
            let Some(caption) = sample.caption.clone() else {
                continue;
            };
            let Some(spec) = parse_caption(&caption) else {
                continue;
            };
            if !keep(&spec) {
                continue;
            }
            let Ok(image) = sample.decode() else {
                continue;
            };
            out.push(Held {
                caption,
                spec,
                image,
            });
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Held-out single-object images, up to `per_color` of each palette colour, grouped by colour.
pub(crate) fn by_color(single: &[Held], per_color: usize) -> Vec<Held> {
    let mut out = Vec::new();
    for c in Color::ALL {
        out.extend(
            single
                .iter()
                .filter(|h| h.spec.objects[0].color == c)
                .take(per_color)
                .cloned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_split_takes_up_to_its_limit_and_none_for_zero() {
        let dir = tempfile::tempdir().unwrap();
        let png = |c: u8| {
            let mut bytes = Vec::new();
            RgbImage::from_pixel(8, 8, image::Rgb([c, c, c]))
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .unwrap();
            bytes
        };
        let members: Vec<(String, Vec<u8>)> = (0..3u8)
            .flat_map(|i| {
                [
                    (format!("{i:03}.txt"), b"a red square".to_vec()),
                    (format!("{i:03}.png"), png(i)),
                ]
            })
            .collect();
        unclip_data_tools::write_shard(&dir.path().join("00000.tar"), &members).unwrap();
        let n = |limit: usize| read_split(dir.path(), limit, |_| true).unwrap().len();
        assert_eq!((n(0), n(1), n(2), n(10)), (0, 1, 2, 3));
        assert_eq!(
            read_split(dir.path(), 10, |s| s.objects.len() == 2)
                .unwrap()
                .len(),
            0
        );
    }
}
