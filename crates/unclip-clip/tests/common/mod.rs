//! Shared helpers for the parity tests: fixture paths and the fixtures' input/output files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

pub type B = Flex;

/// `tests/reference/fixtures/clip/<rel>` (written by `tests/reference/make_clip_fixtures.py`).
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/fixtures/clip")
        .join(rel)
}

/// The tensors of a fixture `io.safetensors`: f32 ones as (shape, values), i64 ones as rows.
pub struct Io {
    pub floats: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub input_ids: Vec<Vec<u32>>,
}

pub fn read_io(rel: &str) -> Io {
    let bytes = std::fs::read(fixture(rel)).expect("fixture exists");
    let st = SafeTensors::deserialize(&bytes).expect("fixture is safetensors");
    let mut floats = BTreeMap::new();
    let mut input_ids = Vec::new();
    for (name, view) in st.iter() {
        match view.dtype() {
            Dtype::F32 => {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                floats.insert(name.to_string(), (view.shape().to_vec(), data));
            }
            Dtype::I64 => {
                let ids: Vec<u32> = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as u32)
                    .collect();
                input_ids = ids.chunks(view.shape()[1]).map(<[u32]>::to_vec).collect();
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        }
    }
    Io { floats, input_ids }
}

impl Io {
    pub fn tensor4(&self, name: &str) -> Tensor<B, 4> {
        let (shape, data) = &self.floats[name];
        Tensor::from_data(
            TensorData::new(data.clone(), shape.clone()),
            &Default::default(),
        )
    }

    pub fn values(&self, name: &str) -> &[f32] {
        &self.floats[name].1
    }
}

/// Largest absolute difference between a burn tensor and expected values (shapes must match).
pub fn max_abs_diff<const D: usize>(actual: Tensor<B, D>, expected: &[f32]) -> f32 {
    let actual = actual
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data");
    assert_eq!(actual.len(), expected.len(), "element counts differ");
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f32::max)
}
