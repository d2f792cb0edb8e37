//! PyTorch ↔ burn parameter layouts: the one place that knows how a PyTorch state dict stores
//! the layers unclip's models are made of, shared by every model that reads or writes other
//! frameworks' weights (CLIP's HF and open_clip files, diffusers' `PriorTransformer`,
//! `UNet2DConditionModel`, `UNet2DModel` and `UnCLIPTextProjModel`).
//!
//! The differences are few and all here: `nn.Linear` stores its weight `[out, in]`, burn's
//! `Linear` `[in, out]` (transposed on the host, so the burn weight is contiguous like one burn
//! initialised itself); `LayerNorm`/`GroupNorm` call their parameters `weight`/`bias` where burn
//! has `gamma`/`beta`; `Conv2d` weights are `[out, in, kh, kw]` in both. A [`TorchReader`] takes
//! a state dict's tensors by key with their exact PyTorch shapes, collecting every problem
//! (missing tensor, wrong shape) instead of stopping at the first, and tells which keys were
//! never read; a [`TorchWriter`] builds a state dict. Models keep their own key names and
//! config fields; this crate knows layers, not models. No files: name → tensor maps in and out,
//! and [`FloatDtype`], the float element types of safetensors weight files (f32, f16, bf16) as
//! bytes both ways.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): a leaf of
//! **models** (and of CLIP) for weight files.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The float element types weight files are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    F16,
    Bf16,
}

impl FloatDtype {
    /// The safetensors element type.
    pub fn safetensors(self) -> safetensors::Dtype {
        match self {
            FloatDtype::F32 => safetensors::Dtype::F32,
            FloatDtype::F16 => safetensors::Dtype::F16,
            FloatDtype::Bf16 => safetensors::Dtype::BF16,
        }
    }

    /// `values` as little-endian bytes of this type (rounded to nearest for f16/bf16).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            FloatDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatDtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            FloatDtype::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }

    /// The f32 values of little-endian `bytes` of safetensors type `dtype`; `None` when it is
    /// not one of the three float types.
    pub fn decode(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
        Some(match dtype {
            safetensors::Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => return None,
        })
    }
}

/// A state dict: tensors by key, in PyTorch layouts, any float dtype.
pub type Tensors = BTreeMap<String, TensorData>;

/// The transpose of a 2-D host tensor (`[r, c]` → `[c, r]`), as f32.
pub fn transpose_2d(data: TensorData) -> TensorData {
    let [rows, cols] = [data.shape[0], data.shape[1]];
    let v = f32_values(data);
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    TensorData::new(t, [cols, rows])
}

/// A tensor's values as f32 (converting other float dtypes).
fn f32_values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().to_vec::<f32>().unwrap_or_default()
}

/// A burn tensor's values on the host as f32, with its shape.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    t.into_data().convert::<f32>()
}

/// A burn `Linear` from a PyTorch weight `[out, in]` and optional bias `[out]`.
pub fn linear_from_torch<B: Backend>(
    weight: TensorData,
    bias: Option<TensorData>,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::from_data(transpose_2d(weight), device)),
        bias: bias.map(|b| Param::from_tensor(Tensor::from_data(b.convert::<f32>(), device))),
    }
}

/// A burn `Linear`'s weight (`[out, in]`) and bias in PyTorch's layout.
pub fn linear_to_torch<B: Backend>(l: &Linear<B>) -> (TensorData, Option<TensorData>) {
    (
        to_host(l.weight.val().transpose()),
        l.bias.as_ref().map(|b| to_host(b.val())),
    )
}

/// A burn `LayerNorm` of epsilon `eps` from PyTorch's `weight` and optional `bias`.
pub fn layer_norm_from_torch<B: Backend>(
    weight: TensorData,
    bias: Option<TensorData>,
    eps: f64,
    device: &B::Device,
) -> LayerNorm<B> {
    let mut norm = LayerNormConfig::new(weight.num_elements())
        .with_epsilon(eps)
        .init(device);
    norm.gamma = Param::from_tensor(Tensor::from_data(weight.convert::<f32>(), device));
    norm.beta = bias.map(|b| Param::from_tensor(Tensor::from_data(b.convert::<f32>(), device)));
    norm
}

/// A burn `LayerNorm`'s `weight` and `bias` in PyTorch's naming.
pub fn layer_norm_to_torch<B: Backend>(n: &LayerNorm<B>) -> (TensorData, Option<TensorData>) {
    (
        to_host(n.gamma.val()),
        n.beta.as_ref().map(|b| to_host(b.val())),
    )
}

/// Reads a state dict into burn parameters, checking each tensor's PyTorch shape. A missing
/// or misshapen tensor is recorded and the parameter keeps its value (or zeros), so that one
/// pass reports every problem; [`TorchReader::errors`] and [`TorchReader::unused`] say what
/// went wrong.
pub struct TorchReader<'a, B: Backend> {
    src: &'a Tensors,
    used: BTreeSet<String>,
    errors: Vec<String>,
    device: B::Device,
}

impl<'a, B: Backend> TorchReader<'a, B> {
    pub fn new(src: &'a Tensors, device: &B::Device) -> Self {
        Self {
            src,
            used: BTreeSet::new(),
            errors: Vec::new(),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The f32 host data of `key` if it has exactly `torch_shape` (else an error is recorded).
    pub fn data(&mut self, key: &str, torch_shape: &[usize]) -> Option<TensorData> {
        let Some(data) = self.src.get(key) else {
            self.errors
                .push(format!("missing tensor {key} {torch_shape:?}"));
            return None;
        };
        self.used.insert(key.to_string());
        if data.shape.as_slice() != torch_shape {
            self.errors.push(format!(
                "tensor {key}: shape {:?}, expected {torch_shape:?}",
                data.shape.as_slice()
            ));
            return None;
        }
        let data = data.clone().convert::<f32>();
        if let Err(e) = data.as_slice::<f32>() {
            self.errors
                .push(format!("tensor {key}: unreadable ({e:?})"));
            return None;
        }
        Some(data)
    }

    /// The tensor `key` of PyTorch shape `torch_shape`, reshaped to `shape`; zeros after an
    /// error.
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        torch_shape: &[usize],
        shape: [usize; D],
    ) -> Tensor<B, D> {
        match self.data(key, torch_shape) {
            Some(d) => Tensor::from_data(TensorData::new(f32_values(d), shape), &self.device),
            None => Tensor::zeros(shape, &self.device),
        }
    }

    /// `p` replaced by the tensor `key` of the same shape (kept after an error).
    pub fn param<const D: usize>(
        &mut self,
        key: &str,
        p: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>> {
        let shape: [usize; D] = p.shape().dims();
        match self.data(key, &shape) {
            Some(d) => Param::from_tensor(Tensor::from_data(d, &self.device)),
            None => p,
        }
    }

    /// A linear weight (burn `[in, out]`) replaced by `key` (PyTorch `[out, in]`).
    pub fn linear_weight(&mut self, key: &str, w: Param<Tensor<B, 2>>) -> Param<Tensor<B, 2>> {
        let [din, dout] = w.shape().dims();
        match self.data(key, &[dout, din]) {
            Some(d) => Param::from_tensor(Tensor::from_data(transpose_2d(d), &self.device)),
            None => w,
        }
    }

    /// `l` with `{key}.weight` and, when it has one, `{key}.bias`.
    pub fn linear(&mut self, key: &str, mut l: Linear<B>) -> Linear<B> {
        l.weight = self.linear_weight(&format!("{key}.weight"), l.weight);
        l.bias = l.bias.map(|b| self.param(&format!("{key}.bias"), b));
        l
    }

    /// A new `Linear` `d_in → d_out` with bias from `{key}.weight` / `{key}.bias` (zeros
    /// after an error).
    pub fn new_linear(&mut self, key: &str, d_in: usize, d_out: usize) -> Linear<B> {
        let weight = match self.data(&format!("{key}.weight"), &[d_out, d_in]) {
            Some(d) => Tensor::from_data(transpose_2d(d), &self.device),
            None => Tensor::zeros([d_in, d_out], &self.device),
        };
        let bias = self.tensor::<1>(&format!("{key}.bias"), &[d_out], [d_out]);
        Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        }
    }

    /// `n` with `{key}.weight` and `{key}.bias`.
    pub fn layer_norm(&mut self, key: &str, mut n: LayerNorm<B>) -> LayerNorm<B> {
        n.gamma = self.param(&format!("{key}.weight"), n.gamma);
        n.beta = n.beta.map(|b| self.param(&format!("{key}.bias"), b));
        n
    }

    /// `n` with `{key}.weight` and `{key}.bias` (for the affine parameters it has).
    pub fn group_norm(&mut self, key: &str, mut n: GroupNorm<B>) -> GroupNorm<B> {
        n.gamma = n.gamma.map(|g| self.param(&format!("{key}.weight"), g));
        n.beta = n.beta.map(|b| self.param(&format!("{key}.bias"), b));
        n
    }

    /// `c` with `{key}.weight` and, when it has one, `{key}.bias`.
    pub fn conv2d(&mut self, key: &str, mut c: Conv2d<B>) -> Conv2d<B> {
        c.weight = self.param(&format!("{key}.weight"), c.weight);
        c.bias = c.bias.map(|b| self.param(&format!("{key}.bias"), b));
        c
    }

    /// Every problem met so far (missing, misshapen or unreadable tensors).
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Records a problem found by the caller.
    pub fn error(&mut self, e: String) {
        self.errors.push(e);
    }

    /// Keys of the state dict no read has taken, in order.
    pub fn unused(&self) -> Vec<&'a str> {
        self.src
            .keys()
            .filter(|k| !self.used.contains(*k))
            .map(String::as_str)
            .collect()
    }

    /// Ok when every tensor was read without a problem; else every problem, one per unused
    /// key as `unexpected tensor KEY`, joined by `; `.
    pub fn finish(self) -> Result<(), String> {
        let mut errors = self.errors.clone();
        errors.extend(
            self.unused()
                .iter()
                .map(|k| format!("unexpected tensor {k}")),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Builds a state dict (f32, PyTorch layouts) from burn parameters.
#[derive(Debug, Default)]
pub struct TorchWriter {
    out: Tensors,
}

impl TorchWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// `t` under `key`, with its burn shape.
    pub fn tensor<B: Backend, const D: usize>(&mut self, key: &str, t: Tensor<B, D>) {
        self.out.insert(key.to_string(), to_host(t));
    }

    /// `t` under `key`, with PyTorch's `shape` (same element count).
    pub fn reshaped<B: Backend, const D: usize>(
        &mut self,
        key: &str,
        t: Tensor<B, D>,
        shape: &[usize],
    ) {
        let values = f32_values(to_host(t));
        self.out
            .insert(key.to_string(), TensorData::new(values, shape.to_vec()));
    }

    /// A linear weight (burn `[in, out]`) as PyTorch's `[out, in]`.
    pub fn linear_weight<B: Backend>(&mut self, key: &str, w: &Param<Tensor<B, 2>>) {
        self.tensor(key, w.val().transpose());
    }

    pub fn linear<B: Backend>(&mut self, key: &str, l: &Linear<B>) {
        self.linear_weight(&format!("{key}.weight"), &l.weight);
        if let Some(b) = &l.bias {
            self.tensor(&format!("{key}.bias"), b.val());
        }
    }

    pub fn layer_norm<B: Backend>(&mut self, key: &str, n: &LayerNorm<B>) {
        self.tensor(&format!("{key}.weight"), n.gamma.val());
        if let Some(b) = &n.beta {
            self.tensor(&format!("{key}.bias"), b.val());
        }
    }

    pub fn group_norm<B: Backend>(&mut self, key: &str, n: &GroupNorm<B>) {
        if let Some(g) = &n.gamma {
            self.tensor(&format!("{key}.weight"), g.val());
        }
        if let Some(b) = &n.beta {
            self.tensor(&format!("{key}.bias"), b.val());
        }
    }

    pub fn conv2d<B: Backend>(&mut self, key: &str, c: &Conv2d<B>) {
        self.tensor(&format!("{key}.weight"), c.weight.val());
        if let Some(b) = &c.bias {
            self.tensor(&format!("{key}.bias"), b.val());
        }
    }

    /// The state dict.
    pub fn into_tensors(self) -> Tensors {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::LinearConfig;

    type B = Flex;

    #[test]
    fn linear_round_trips_through_the_torch_layout() {
        let device = Default::default();
        // PyTorch weight [out = 2, in = 3]: row o holds the weights of output o.
        let w = TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]);
        let b = TensorData::new(vec![0.5f32, -0.5], [2]);
        let l = linear_from_torch::<B>(w.clone(), Some(b.clone()), &device);
        assert_eq!(l.weight.val().dims(), [3, 2]);
        // y = W x + b with x = e_1 (the second input): column 1 of the PyTorch weight.
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![0f32, 1., 0.], [1, 3]), &device);
        let y: Vec<f32> = l.forward(x).into_data().to_vec().unwrap();
        assert_eq!(y, vec![2.5, 4.5]);
        let (w2, b2) = linear_to_torch(&l);
        assert_eq!(w2, w);
        assert_eq!(b2, Some(b));
    }

    #[test]
    fn the_reader_reports_every_problem_and_the_unread_keys() {
        let device = Default::default();
        let mut src = Tensors::new();
        src.insert("a.weight".into(), TensorData::new(vec![0f32; 6], [3, 2]));
        src.insert("extra".into(), TensorData::new(vec![0f32; 1], [1]));
        let mut r = TorchReader::<B>::new(&src, &device);
        let l = LinearConfig::new(3, 2).init::<B>(&device);
        let _ = r.linear("a", l);
        let e = r.finish().unwrap_err();
        assert!(
            e.contains("tensor a.weight: shape [3, 2], expected [2, 3]"),
            "{e}"
        );
        assert!(e.contains("missing tensor a.bias [2]"), "{e}");
        assert!(e.contains("unexpected tensor extra"), "{e}");
    }

    #[test]
    fn float_dtypes_round_trip_through_bytes() {
        let v = [1.0f32, -0.5, 3.25, 1e-3];
        for t in [FloatDtype::F32, FloatDtype::F16, FloatDtype::Bf16] {
            let back = FloatDtype::decode(t.safetensors(), &t.encode(&v)).unwrap();
            let tol = if t == FloatDtype::F32 { 0.0 } else { 4e-3 };
            for (a, b) in v.iter().zip(&back) {
                assert!((a - b).abs() <= tol * a.abs().max(1.0), "{t:?}: {a} vs {b}");
            }
        }
        assert_eq!(FloatDtype::F16.encode(&[1.0]), vec![0x00, 0x3c]);
        assert!(FloatDtype::decode(safetensors::Dtype::I64, &[0; 8]).is_none());
    }

    #[test]
    fn writer_and_reader_agree() {
        let device = Default::default();
        let l = LinearConfig::new(4, 3).init::<B>(&device);
        let n = LayerNormConfig::new(3).init::<B>(&device);
        let mut w = TorchWriter::new();
        w.linear("lin", &l);
        w.layer_norm("norm", &n);
        let t = w.into_tensors();
        assert_eq!(t["lin.weight"].shape.as_slice(), &[3, 4]);
        let mut r = TorchReader::<B>::new(&t, &device);
        let back = r.linear("lin", LinearConfig::new(4, 3).init::<B>(&device));
        let _ = r.layer_norm("norm", LayerNormConfig::new(3).init::<B>(&device));
        r.finish().unwrap();
        assert_eq!(back.weight.val().into_data(), l.weight.val().into_data());
    }
}
