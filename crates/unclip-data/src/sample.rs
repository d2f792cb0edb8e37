//! One sample's member bytes read and checked, the step between grouping tar members into
//! samples and a task's transform: find the image member, read the caption (`.txt`, or a field
//! of the `.json`), check what must be there, and hand the bytes on as a [`DecodedSample`]
//! (decoded lazily by the transform). The loader's workers and the embed job both read
//! samples through [`read_sample`], so they agree on what a usable sample is and on the reason
//! a bad one is counted under.

use std::path::PathBuf;

use crate::config::CaptionSource;
use crate::decode::{caption_from_json, caption_from_txt, IMAGE_EXTENSIONS};
use crate::shard::{MemberReader, RawSample};
use crate::transform::DecodedSample;

/// The largest caption member (`.txt`, `.json`) read: 1 MiB (a caption is a sentence; CLIP reads
/// 77 tokens). A bigger one makes the sample `caption_too_large` without being read.
pub const MAX_CAPTION_BYTES: u64 = 1 << 20;

/// Image formats we recognise but do not decode: counted apart from samples with no image.
const OTHER_IMAGE_EXTENSIONS: [&str; 8] =
    ["gif", "bmp", "tif", "tiff", "avif", "heic", "jxl", "jp2"];

/// How a sample is read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub caption: CaptionSource,
    /// Skip samples without a (non-empty) caption as `missing_caption`.
    pub require_caption: bool,
    /// Images over this many pixels are refused before decoding.
    pub max_pixels: u64,
}

/// The sample `raw` of `shards` read with `reader`: its bytes as a [`DecodedSample`] and a
/// warning to count (`lossy_caption_utf8`), or the reason it is skipped.
pub fn read_sample(
    shards: &[PathBuf],
    opts: &ReadOptions,
    reader: &mut MemberReader,
    raw: RawSample,
) -> Result<(DecodedSample, Option<&'static str>), &'static str> {
    if let Some(reason) = raw.invalid {
        return Err(reason);
    }
    let Some(image) = raw
        .members
        .iter()
        .find(|m| IMAGE_EXTENSIONS.contains(&m.ext.as_str()))
    else {
        let other_image = raw
            .members
            .iter()
            .any(|m| OTHER_IMAGE_EXTENSIONS.contains(&m.ext.as_str()));
        return Err(if other_image {
            "unsupported_image_format"
        } else {
            "missing_image"
        });
    };
    if ["txt", "json"]
        .iter()
        .any(|ext| raw.member(ext).is_some_and(|m| m.len() > MAX_CAPTION_BYTES))
    {
        return Err("caption_too_large");
    }
    let mut warning = None;
    let caption = match &opts.caption {
        CaptionSource::Txt => match raw.member("txt") {
            Some(m) => {
                let bytes = reader
                    .read(shards, &raw, m)
                    .map_err(|_| "unreadable_member")?;
                let (text, lossy) = caption_from_txt(&bytes);
                if lossy {
                    warning = Some("lossy_caption_utf8");
                }
                Some(text)
            }
            None => None,
        },
        CaptionSource::Json(_) => None,
    };
    let json_bytes = match raw.member("json") {
        Some(m) => Some(
            reader
                .read(shards, &raw, m)
                .map_err(|_| "unreadable_member")?,
        ),
        None => None,
    };
    let caption = match &opts.caption {
        CaptionSource::Txt => caption,
        CaptionSource::Json(field) => json_bytes
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|j| caption_from_json(&j, field)),
    };
    if opts.require_caption && caption.as_deref().is_none_or(str::is_empty) {
        return Err("missing_caption");
    }
    let image_bytes = reader
        .read(shards, &raw, image)
        .map_err(|_| "unreadable_member")?;
    let sample = DecodedSample {
        shard: shards[raw.shard as usize].as_path().into(),
        key: raw.key,
        caption,
        json_bytes,
        image_bytes,
        image_ext: image.ext.clone(),
        max_pixels: opts.max_pixels,
    };
    Ok((sample, warning))
}
