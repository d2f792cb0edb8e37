//! The export formats of a stage's weights. Native: `config.json` ([`ExportMeta`]: the
//! stage, its `model:` and `diffusion:` sections, where the weights came from) and
//! `model.safetensors` (parameters by module path, f32/f16/bf16) — enough to rebuild the
//! network without the run or its data ([`crate::reload`]). diffusers: `config.json` in
//! diffusers' field names and `diffusion_pytorch_model.safetensors` in PyTorch layouts, with
//! `unclip_export.json` beside them. Both are deterministic: the same weights give the same
//! bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::TensorView;
use serde::Serialize;
use unclip_layout::FloatDtype;

use crate::{Stage, StageError};

/// The format tag of a native export's `config.json`.
pub const EXPORT_FORMAT: &str = "unclip-export-1";

/// Element type of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for ExportDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype `{s}`; expected f32, f16 or bf16")),
        }
    }
}

/// Which files an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportLayout {
    /// unclip's own: `config.json` (this [`ExportMeta`]) + `model.safetensors`; a CLIP's
    /// native layout is the HF transformers folder.
    #[default]
    Native,
    /// What diffusers' model classes load (`config.json` + `diffusion_pytorch_model.safetensors`).
    Diffusers,
}

impl std::str::FromStr for ExportLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Self::Native),
            "diffusers" => Ok(Self::Diffusers),
            _ => Err(format!(
                "unknown layout `{s}`; expected native or diffusers"
            )),
        }
    }
}

/// What `config.json` holds (and, compactly, the safetensors `__metadata__.unclip` entry).
#[derive(Debug, Clone, Serialize)]
pub struct ExportMeta {
    pub format: &'static str,
    pub stage: Stage,
    /// The run's `model:` section.
    pub model: serde_json::Value,
    pub diffusion: unclip_diffusion::DiffusionConfig,
    pub image_size: u64,
    pub step: u64,
    pub config_hash: String,
    /// The checkpoint folder the weights came from.
    pub source: String,
    /// `ema` or `model`.
    pub weights: &'static str,
    pub dtype: ExportDtype,
}

/// The two files written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tensors: usize,
    pub step: u64,
}

/// Float parameters by dotted module path (`conv_in.weight`), in module order.
pub fn named_tensors<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    struct Named {
        stack: Vec<String>,
        out: Vec<(String, TensorData)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Named {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.push(name.to_owned());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.out.push((self.stack.join("."), data));
        }
    }
    let mut v = Named {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

impl ExportDtype {
    /// The file element type.
    pub fn float(self) -> FloatDtype {
        match self {
            ExportDtype::F32 => FloatDtype::F32,
            ExportDtype::F16 => FloatDtype::F16,
            ExportDtype::Bf16 => FloatDtype::Bf16,
        }
    }
}

fn encode(data: &TensorData, dtype: ExportDtype) -> Vec<u8> {
    let values: Vec<f32> = data.to_vec().unwrap_or_default();
    dtype.float().encode(&values)
}

/// Serializes `module`'s weights as safetensors with one metadata entry `unclip`.
pub fn to_safetensors<B: Backend, M: Module<B>>(
    module: &M,
    dtype: ExportDtype,
    meta: &str,
) -> Result<Vec<u8>, String> {
    let st_dtype = dtype.float().safetensors();
    let tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = named_tensors::<B, M>(module)
        .into_iter()
        .map(|(k, d)| (k, (d.shape.to_vec(), encode(&d, dtype))))
        .collect();
    let mut views = Vec::new();
    for (k, (shape, bytes)) in &tensors {
        let view = TensorView::new(st_dtype, shape.clone(), bytes).map_err(|e| e.to_string())?;
        views.push((k.clone(), view));
    }
    let metadata = std::collections::HashMap::from([("unclip".to_owned(), meta.to_owned())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// Loads exported weights (any of the three dtypes) into `module` by name; every parameter
/// must be present with its shape.
pub fn load_safetensors<B: Backend, M: Module<B>>(module: M, bytes: &[u8]) -> Result<M, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    struct Load<'a> {
        stack: Vec<String>,
        st: &'a safetensors::SafeTensors<'a>,
        error: Option<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.push(name.to_owned());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let name = self.stack.join(".");
            let loaded = self
                .st
                .tensor(&name)
                .map_err(|e| format!("{name}: {e}"))
                .and_then(|v| {
                    let values = FloatDtype::decode(v.dtype(), v.data())
                        .ok_or_else(|| format!("{name}: unsupported dtype {:?}", v.dtype()))?;
                    if v.shape() != tensor.dims().as_slice() {
                        return Err(format!(
                            "{name}: shape {:?}, the model expects {:?}",
                            v.shape(),
                            tensor.dims()
                        ));
                    }
                    Ok(Tensor::<B, D>::from_data(
                        TensorData::new(values, tensor.dims()),
                        &tensor.device(),
                    ))
                });
            let t = match loaded {
                Ok(t) => t,
                Err(e) => {
                    self.error.get_or_insert(e);
                    tensor
                }
            };
            Param::from_mapped_value(id, t, mapper)
        }
    }
    let mut l = Load {
        stack: Vec::new(),
        st: &st,
        error: None,
    };
    let module = module.map(&mut l);
    match l.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// Writes the native layout: `config.json` (`meta`) and `model.safetensors`.
pub fn write_native<B: Backend, M: Module<B>>(
    model: &M,
    meta: &ExportMeta,
    out: &Path,
) -> Result<ExportReport, StageError> {
    let compact = serde_json::to_string(meta).unwrap_or_default();
    let mut pretty = serde_json::to_string_pretty(meta).unwrap_or_default();
    pretty.push('\n');
    let bytes = to_safetensors::<B, M>(model, meta.dtype, &compact).map_err(StageError::Input)?;
    let config = out.join("config.json");
    let weights = out.join("model.safetensors");
    unclip_fs::write_atomic(&weights, &bytes)
        .map_err(|e| StageError::io("cannot write", &weights, e))?;
    unclip_fs::write_atomic(&config, pretty.as_bytes())
        .map_err(|e| StageError::io("cannot write", &config, e))?;
    Ok(ExportReport {
        config,
        weights,
        tensors: named_tensors::<B, M>(model).len(),
        step: meta.step,
    })
}

/// Writes a diffusers model folder: `config.json` (`config`) and
/// `diffusion_pytorch_model.safetensors` (`tensors`, PyTorch layouts, in `meta.dtype`), plus
/// `unclip_export.json` (`meta`) beside them.
pub fn write_diffusers(
    out: &Path,
    config: &serde_json::Value,
    tensors: impl IntoIterator<Item = (String, TensorData)>,
    meta: &ExportMeta,
) -> Result<ExportReport, StageError> {
    let st_dtype = meta.dtype.float().safetensors();
    let encoded: BTreeMap<String, (Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, d)| {
            let d = d.convert::<f32>();
            (k, (d.shape.to_vec(), encode(&d, meta.dtype)))
        })
        .collect();
    let mut views = Vec::new();
    for (k, (shape, bytes)) in &encoded {
        let view = TensorView::new(st_dtype, shape.clone(), bytes)
            .map_err(|e| StageError::Input(e.to_string()))?;
        views.push((k.clone(), view));
    }
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| StageError::Input(e.to_string()))?;
    let weights = out.join("diffusion_pytorch_model.safetensors");
    let config_path = out.join("config.json");
    let info_path = out.join("unclip_export.json");
    let pretty = |v: &dyn erased::Json| v.pretty();
    for (path, data) in [
        (&weights, bytes),
        (&config_path, pretty(config).into_bytes()),
        (&info_path, pretty(meta).into_bytes()),
    ] {
        unclip_fs::write_atomic(path, &data)
            .map_err(|e| StageError::io("cannot write", path, e))?;
    }
    Ok(ExportReport {
        config: config_path,
        weights,
        tensors: encoded.len(),
        step: meta.step,
    })
}

mod erased {
    /// Pretty JSON with a final newline, for any serializable value.
    pub trait Json {
        fn pretty(&self) -> String;
    }
    impl<T: serde::Serialize + ?Sized> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
        }
    }
}
