//! `report.md` and `report.json`: what the evaluation measured, written for a reader who has
//! not seen the code.

use std::path::Path;

use unclip_infer::{pipeline_error, InferError};

use crate::plots::{sweep_xmax, PLOT_X_GRID};
use crate::EvalReport;

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1} %", 100.0 * v)
    } else {
        "–".into()
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or("–".into(), pct)
}

pub(crate) fn write_report(r: &EvalReport, out: &Path) -> Result<(), InferError> {
    let json = serde_json::to_string_pretty(r).unwrap_or_default() + "\n";
    let path = out.join("report.json");
    unclip_fs::write_atomic(&path, json.as_bytes()).map_err(|e| pipeline_error(&path, e))?;
    let mut md = String::new();
    md.push_str("# unclip evaluation\n\n");
    md.push_str(&format!(
        "Pipeline `{}`; decoder guidance {} (pipeline default); the decoder's images (before \
         the upsamplers, whose quality is measured against bicubic upsampling in their own \
         validation) scored by the shapes-world pixel scorer. Chance: colour {}, shape {}.\n\n",
        r.pipeline.display(),
        r.decoder_guidance,
        pct(r.chance_color),
        pct(r.chance_shape)
    ));
    md.push_str("| set | images | colour | shape | position | binding | CLIP score | CMMD |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for (name, s) in [
        ("held-out single-object captions", &r.single),
        ("two-object captions", &r.pairs),
        ("held-out colour–shape combinations", &r.holdout),
    ] {
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {:.3} | {:.2} |\n",
            s.images,
            pct(s.color),
            pct(s.shape),
            opt_pct(s.position),
            opt_pct(s.binding),
            s.clip_score,
            s.cmmd
        ));
    }
    md.push_str(
        "\nColour/shape of two-object captions: both named colours (shapes) on two distinct \
         objects; binding: both (colour, shape) pairs on distinct objects. CLIP score: mean \
         cosine of image and caption embeddings (frozen CLIP). CMMD: MMD² ×1000 between CLIP \
         embeddings of generated and real images (Gaussian kernel, σ = 0.5).\n\n",
    );
    if let Some(b) = &r.single.shape_by_size {
        md.push_str(&format!(
            "Shape accuracy on held-out single-object captions by the size of the real image's \
             object: small {} ({} images), large {} ({} images).\n\n",
            opt_pct(b.small),
            b.small_images,
            opt_pct(b.large),
            b.large_images
        ));
    }
    md.push_str("Grids (real | generated): `single.png`, `pairs.png`, `holdout.png`.\n\n");
    let dc = &r.decoder_colors;
    md.push_str(&format!(
        "## The decoder follows the image embedding\n\nThe decoder alone, conditioned on the CLIP \
         embeddings of {} real held-out images ({} colours) and their captions: the object has \
         the real image's colour in {} of the samples at guidance 1, {} at guidance 3, and {} \
         at guidance 3 when each embedding is swapped for one of another colour. The object \
         has the real image's shape in {} at guidance 1 and {} at guidance 3: what the decoder \
         draws from a true image embedding, with no prior in between.\n\n",
        dc.images,
        dc.colors,
        pct(dc.guidance_1),
        pct(dc.guidance_3),
        pct(dc.shuffled),
        pct(dc.shape_guidance_1),
        pct(dc.shape_guidance_3)
    ));
    let zs = &r.clip_zero_shot;
    md.push_str(&format!(
        "The frozen CLIP as a zero-shot classifier of {} real held-out single-object images \
         (each image's caption with its colour word replaced by every palette colour, or its \
         shape word by every shape; right when the true word's caption is nearest the image \
         embedding): colour {}, shape {} — how much of each attribute the embeddings \
         carry.\n\n",
        zs.images,
        pct(zs.color),
        pct(zs.shape)
    ));
    md.push_str("## Guidance sweep\n\n![sweep](guidance_sweep.png)\n\n");
    md.push_str(
        "x: diversity (mean pairwise RMS pixel distance \
         among one caption's samples); y: colour accuracy; blue: unCLIP (prior → decoder), red: the decoder fed the text embedding in \
         place of an image embedding; larger markers = larger guidance.\n\n",
    );
    md.push_str(&format!(
        "Axes: colour accuracy from 0 to 100 % (grey lines every 10 %); diversity from 0 to \
         {:.3} (grey lines every {PLOT_X_GRID}).\n\n",
        sweep_xmax(&r.sweep)
    ));
    md.push_str("| method | guidance | colour | shape | CLIP score | diversity |\n|---|---|---|---|---|---|\n");
    for s in &r.sweep {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} |\n",
            s.method,
            s.guidance,
            pct(s.color),
            pct(s.shape),
            s.clip_score,
            s.diversity
        ));
    }
    let path = out.join("report.md");
    unclip_fs::write_atomic(&path, md.as_bytes()).map_err(|e| pipeline_error(&path, e))
}
