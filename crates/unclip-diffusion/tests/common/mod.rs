//! Shared by the parity tests: reading the committed fixtures and comparing numbers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

pub type B = Flex;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/fixtures/diffusion")
        .join(name)
}

/// A fixture tensor: its shape and values widened to f64.
#[derive(Debug, Clone)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Array {
    pub fn tensor<const D: usize>(&self) -> Tensor<B, D> {
        let v: Vec<f32> = self.values.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v, self.shape.clone()), &Default::default())
    }
    pub fn usizes(&self) -> Vec<usize> {
        self.values.iter().map(|&x| x as usize).collect()
    }
    /// Entry `k` of the leading axis.
    pub fn row(&self, k: usize) -> Array {
        let n: usize = self.shape[1..].iter().product();
        Array {
            shape: self.shape[1..].to_vec(),
            values: self.values[k * n..(k + 1) * n].to_vec(),
        }
    }
}

pub fn load(name: &str) -> HashMap<String, Array> {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (
                name,
                Array {
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

pub fn values<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data()
        .to_vec::<f32>()
        .expect("f32 tensor")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Largest |a − b| / max(1, |b|) — absolute error for values up to 1, relative above.
pub fn max_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let err = max_err(got, want);
    eprintln!("{what}: max error {err:e} (tolerance {tol:e})");
    assert!(err <= tol, "{what}: max error {err:e} > {tol:e}");
}
