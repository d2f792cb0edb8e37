//! `unclip export`: one checkpoint's weights (EMA by default) as `model.safetensors` plus a
//! `config.json` that is enough to rebuild the model. Both files are deterministic: exporting
//! the same checkpoint twice gives the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;

use crate::checkpoint;
use crate::config::{ModelSection, Stage};
use crate::ema::renumber_params;
use crate::launch::{self, Loaded, StageJob, TaskFactory};
use crate::{TrainError, TrainTask};

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

fn encode(data: &TensorData, dtype: ExportDtype) -> Vec<u8> {
    let values: Vec<f32> = data.to_vec().unwrap_or_default();
    match dtype {
        ExportDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ExportDtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        ExportDtype::Bf16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Serializes `module`'s weights as safetensors with one metadata entry `unclip`.
pub fn to_safetensors<B: Backend, M: Module<B>>(
    module: &M,
    dtype: ExportDtype,
    meta: &str,
) -> Result<Vec<u8>, String> {
    let st_dtype = match dtype {
        ExportDtype::F32 => Dtype::F32,
        ExportDtype::F16 => Dtype::F16,
        ExportDtype::Bf16 => Dtype::BF16,
    };
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
                    let b = v.data();
                    let values: Vec<f32> = match v.dtype() {
                        Dtype::F32 => b
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                        Dtype::F16 => b
                            .chunks_exact(2)
                            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                            .collect(),
                        Dtype::BF16 => b
                            .chunks_exact(2)
                            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                            .collect(),
                        other => return Err(format!("{name}: unsupported dtype {other:?}")),
                    };
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

struct ExportJob<'a> {
    checkpoint: &'a Path,
    out: &'a Path,
    use_ema: bool,
    dtype: ExportDtype,
    layout: ExportLayout,
}

impl StageJob for ExportJob<'_> {
    type Output = ExportReport;
    fn run<F: TaskFactory, C: ModelSection>(
        self,
        factory: F,
        loaded: Loaded<C>,
    ) -> Result<ExportReport, TrainError> {
        type B = Autodiff<Flex>;
        let state = checkpoint::load_state(self.checkpoint)?;
        let device = Default::default();
        let task = factory.build::<B>(&device)?;
        let model = renumber_params(task.init_model(&device));
        let which = if self.use_ema && loaded.config.ema.enabled {
            "ema"
        } else {
            "model"
        };
        let rec = checkpoint::load_record::<B, _>(self.checkpoint, which, &device)?;
        let model = model.load_record(rec);
        let c = loaded.config;
        let meta = ExportMeta {
            format: "unclip-export-1",
            stage: c.stage,
            model: serde_json::to_value(&c.model).unwrap_or_default(),
            diffusion: c.diffusion,
            image_size: c.data.image_size.0,
            step: state.step,
            config_hash: state.config_hash,
            source: self.checkpoint.display().to_string(),
            weights: which,
            dtype: self.dtype,
        };
        std::fs::create_dir_all(self.out)
            .map_err(|e| TrainError::io("cannot create", self.out, e))?;
        task.export(&model, &meta, self.out, self.layout)
    }
}

/// Exports checkpoint folder `checkpoint` into `out` (EMA weights unless `use_ema` is false).
pub fn export(
    checkpoint: &Path,
    out: &Path,
    use_ema: bool,
    dtype: ExportDtype,
    layout: ExportLayout,
) -> Result<ExportReport, TrainError> {
    let cfg_path = checkpoint.join("config.resolved.yaml");
    let job = ExportJob {
        checkpoint,
        out,
        use_ema,
        dtype,
        layout,
    };
    launch::for_stage(&cfg_path, &[], None, job)
}

/// Writes the native layout: `config.json` (`meta`) and `model.safetensors`.
pub fn write_native<B: Backend, M: Module<B>>(
    model: &M,
    meta: &ExportMeta,
    out: &Path,
) -> Result<ExportReport, TrainError> {
    let compact = serde_json::to_string(meta).unwrap_or_default();
    let mut pretty = serde_json::to_string_pretty(meta).unwrap_or_default();
    pretty.push('\n');
    let bytes = to_safetensors::<B, M>(model, meta.dtype, &compact).map_err(TrainError::Task)?;
    let config = out.join("config.json");
    let weights = out.join("model.safetensors");
    unclip_fs::write_atomic(&weights, &bytes)
        .map_err(|e| TrainError::io("cannot write", &weights, e))?;
    unclip_fs::write_atomic(&config, pretty.as_bytes())
        .map_err(|e| TrainError::io("cannot write", &config, e))?;
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
    tensors: Vec<(String, TensorData)>,
    meta: &ExportMeta,
) -> Result<ExportReport, TrainError> {
    let st_dtype = match meta.dtype {
        ExportDtype::F32 => Dtype::F32,
        ExportDtype::F16 => Dtype::F16,
        ExportDtype::Bf16 => Dtype::BF16,
    };
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
            .map_err(|e| TrainError::Task(e.to_string()))?;
        views.push((k.clone(), view));
    }
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Task(e.to_string()))?;
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
            .map_err(|e| TrainError::io("cannot write", path, e))?;
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
