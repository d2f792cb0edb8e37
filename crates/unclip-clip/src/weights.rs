//! Host-side weight maps and safetensors I/O.
//!
//! Weights are read into a name → f32 tensor map first (converting F16/BF16), checked against the
//! keys and shapes a config implies, and only then turned into burn parameters. Keeping this
//! step on the host makes the missing/unexpected key report complete (every problem at once,
//! in the file's own key names) and the layout adapters plain data transforms.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::ClipError;

/// One tensor on the host, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// The transpose of a 2-D tensor.
    pub fn transposed(&self) -> Self {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self::new(vec![cols, rows], data)
    }

    /// Rows `start..start + n` of a tensor whose first axis is split (q/k/v stacking).
    pub fn rows(&self, start: usize, n: usize) -> Self {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = n;
        Self::new(shape, self.data[start * row..(start + n) * row].to_vec())
    }
}

/// Tensors by name, sorted (so anything derived from it is deterministic).
pub type WeightMap = BTreeMap<String, HostTensor>;

/// The floating-point type tensors are stored with on disk.
pub use unclip_layout::FloatDtype as StoreDtype;

/// Read every tensor of a safetensors file as f32.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<WeightMap, ClipError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ClipError::Io {
        path: shown.clone(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ClipError::Safetensors {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let mut map = WeightMap::new();
    for (name, view) in st.iter() {
        let Some(data) = StoreDtype::decode(view.dtype(), view.data()) else {
            return Err(ClipError::Dtype {
                path: shown,
                key: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        };
        map.insert(
            name.to_string(),
            HostTensor::new(view.shape().to_vec(), data),
        );
    }
    Ok(map)
}

/// Serialize a weight map as safetensors bytes (with the `format: pt` metadata transformers
/// checks for). Byte-identical for identical maps.
pub fn safetensors_bytes(map: &WeightMap, dtype: StoreDtype) -> Result<Vec<u8>, ClipError> {
    let encoded: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = map
        .iter()
        .map(|(name, t)| {
            let bytes = dtype.encode(&t.data);
            (name.as_str(), dtype.safetensors(), t.shape.clone(), bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (name, dt, shape, bytes) in &encoded {
        let view =
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).map_err(|e| {
                ClipError::Safetensors {
                    path: (*name).to_string(),
                    message: e.to_string(),
                }
            })?;
        views.push((*name, view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| ClipError::Safetensors {
        path: "<serialize>".to_string(),
        message: e.to_string(),
    })
}

/// Compare a map against the expected keys and shapes; `ignorable` keys (non-persistent
/// buffers some exporters save) are dropped silently. Reports every problem at once.
pub(crate) fn check_keys(
    path: &str,
    layout: &'static str,
    map: &mut WeightMap,
    expected: &[(String, Vec<usize>)],
    ignorable: impl Fn(&str) -> bool,
) -> Result<(), ClipError> {
    map.retain(|k, _| !ignorable(k));
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    for (key, shape) in expected {
        match map.get(key) {
            None => missing.push(key.clone()),
            Some(t) if &t.shape != shape => {
                wrong_shape.push(format!("{key} (file {:?}, config {:?})", t.shape, shape))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let unexpected: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .cloned()
        .collect();
    if missing.is_empty() && unexpected.is_empty() && wrong_shape.is_empty() {
        Ok(())
    } else {
        Err(ClipError::Keys {
            path: path.to_string(),
            layout,
            missing,
            unexpected,
            wrong_shape,
        })
    }
}
