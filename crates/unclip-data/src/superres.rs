//! The upsamplers' training pairs, made in the loader's workers: the target image (through the
//! standard transform to `image_size`), in training a random crop of it aligned to the low-res
//! pixel grid, its degraded low-resolution copy ([`crate::degrade`]) and that copy upsampled
//! back to the crop's size — fields `image`, `low_res` (both `[3, S, S]`) and `low_res_small`
//! (`[3, s, s]`, for previews).

use image::RgbImage;

use crate::degrade::LowRes;
use crate::pixels::to_chw_unit;
use crate::transform::{DecodedSample, Example, Field, SampleContext, TransformError};
use crate::{ImageTransform, SampleTransform};

/// The per-sample transform: target crop, corrupted low-res copy, both at the crop's size.
#[derive(Debug, Clone)]
pub struct SuperResTransform {
    /// The standard transform to the full target size.
    pub base: ImageTransform,
    pub low_res: LowRes,
    /// Target side / low-res side.
    pub factor: u32,
    /// Side of the crop (the full target side for validation).
    pub crop: u32,
}

impl SuperResTransform {
    /// (target crop, corrupted low-res, low-res upsampled to the crop) of a decoded image.
    pub fn apply_rgb(
        &self,
        img: &RgbImage,
        ctx: &SampleContext,
    ) -> Result<(RgbImage, RgbImage, RgbImage), String> {
        let full = self.base.apply_rgb(img, &mut ctx.rng("image_transform"))?;
        self.pair(full, ctx)
    }

    /// The target and its low-res copies from the base transform's output.
    fn pair(
        &self,
        full: RgbImage,
        ctx: &SampleContext,
    ) -> Result<(RgbImage, RgbImage, RgbImage), String> {
        let s = self.base.image_size;
        let target = if self.crop < s {
            let mut rng = ctx.rng("upsampler_crop");
            let cells = ((s - self.crop) / self.factor + 1) as u64;
            let x = rng.below(cells) as u32 * self.factor;
            let y = rng.below(cells) as u32 * self.factor;
            image::imageops::crop_imm(&full, x, y, self.crop, self.crop).to_image()
        } else {
            full
        };
        let small =
            self.low_res
                .degrade(&target, self.crop / self.factor, &mut ctx.rng("degrade"))?;
        let up = self.low_res.upsample(&small, self.crop)?;
        Ok((target, small, up))
    }
}

impl SampleTransform for SuperResTransform {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        // Sources at least 4× the target side decode at a reduced scale (decode_rgb_for).
        let px = sample.decode_for(self.base.resize_short())?;
        let (target, small, up) = self
            .base
            .apply_pixels(&px, &mut ctx.rng("image_transform"))
            .and_then(|full| self.pair(full, &ctx))
            .map_err(|detail| TransformError::Other {
                reason: "transform_error",
                detail,
            })?;
        let field = |name: &str, img: &RgbImage| {
            let (w, h) = img.dimensions();
            let mut data = Vec::with_capacity((3 * w * h) as usize);
            to_chw_unit(img, &mut data);
            Field {
                name: name.into(),
                shape: vec![3, h as usize, w as usize],
                data,
            }
        };
        Ok(Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields: vec![
                field("image", &target),
                field("low_res", &up),
                field("low_res_small", &small),
            ],
        })
    }
}
