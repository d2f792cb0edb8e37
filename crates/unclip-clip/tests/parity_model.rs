//! The model against transformers' `CLIPModel` and open_clip's `CLIP` (fixtures from
//! `tests/reference/make_clip_fixtures.py`): image embeddings, text embeddings and text
//! encodings from the same pixel values and token ids, within 1e-4.

mod common;

use common::{fixture, max_abs_diff, read_io, B};
use unclip_clip::{pool_position, Clip, ClipConfig};

const TOL: f32 = 1e-4;

fn compare(model: &Clip<B>, io_rel: &str) -> [f32; 3] {
    let io = read_io(io_rel);
    let image = max_abs_diff(
        model.encode_image(io.tensor4("pixel_values")),
        io.values("image_embeds"),
    );
    let text = model.encode_text(&io.input_ids);
    // The mask covers each row up to its first end-of-text token.
    let eos = model.config.text_config.eos_token_id;
    let mask = text
        .text_mask
        .clone()
        .into_data()
        .into_vec::<bool>()
        .expect("bool data");
    for (row, m) in io.input_ids.iter().zip(mask.chunks(row_len(&io.input_ids))) {
        let p = pool_position(row, eos);
        assert!(m.iter().enumerate().all(|(i, &v)| v == (i <= p)));
    }
    let embeds = max_abs_diff(text.text_embeds, io.values("text_embeds"));
    // The training path, on rows cut after the last end-of-text token, gives the same embeds.
    let cut = max_abs_diff(
        model.encode_text_embeds(&io.input_ids),
        io.values("text_embeds"),
    );
    assert!(cut <= TOL, "{io_rel}: cut rows {cut}");
    let encodings = max_abs_diff(text.text_encodings, io.values("text_encodings"));
    println!("{io_rel}: max |Δ| image {image:.2e}, text {embeds:.2e}, encodings {encodings:.2e}");
    assert!(
        image <= TOL && embeds <= TOL && encodings <= TOL,
        "{io_rel}: {image} {embeds} {encodings}"
    );
    [image, embeds, encodings]
}

fn row_len(rows: &[Vec<u32>]) -> usize {
    rows[0].len()
}

fn hf_case(name: &str) {
    let model = Clip::<B>::load_hf_dir(fixture(name), &Default::default()).expect("fixture loads");
    compare(&model, &format!("{name}/io.safetensors"));
}

#[test]
fn hf_quick_gelu_pad_zero_f32() {
    hf_case("hf_quickgelu_pad0_f32");
}

#[test]
fn hf_gelu_pad_eos_f16() {
    hf_case("hf_gelu_padeos_f16");
}

#[test]
fn hf_unequal_towers_pad_eos_bf16() {
    hf_case("hf_mixed_padeos_bf16");
}

#[test]
fn open_clip_layout() {
    let config = ClipConfig::from_file(fixture("open_clip/config.json")).expect("config");
    let model = Clip::<B>::load_open_clip(
        &config,
        fixture("open_clip/open_clip_model.safetensors"),
        &Default::default(),
    )
    .expect("open_clip fixture loads");
    compare(&model, "open_clip/io.safetensors");
}
