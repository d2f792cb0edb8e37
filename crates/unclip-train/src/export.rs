//! `unclip export`: one checkpoint's weights (EMA by default) written by its stage's export
//! (`unclip_stages::export`: `model.safetensors` plus a `config.json` that is enough to rebuild
//! the model, or diffusers' layout). Exporting the same checkpoint twice gives the same bytes.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::Module;

pub use unclip_stages::export::{ExportDtype, ExportLayout, ExportReport};
use unclip_stages::export::{ExportMeta, EXPORT_FORMAT};

use crate::checkpoint;
use crate::config::ModelSection;
use crate::ema::renumber_params;
use crate::launch::{self, Loaded, StageJob};
use crate::{TaskFactory, TrainError, TrainTask};

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
        let sums = checkpoint::verify(self.checkpoint)?;
        let device = Default::default();
        let task = factory.build::<B>(&device)?;
        let model = renumber_params(task.init_model(&device));
        let which = if self.use_ema && loaded.config.ema.enabled {
            "ema"
        } else {
            "model"
        };
        checkpoint::check_shapes::<B, _>(self.checkpoint, &sums, which, &model)?;
        let rec = checkpoint::load_record::<B, _>(self.checkpoint, which, &device)?;
        let model = model.load_record(rec);
        let c = loaded.config;
        let meta = ExportMeta {
            format: EXPORT_FORMAT,
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

/// Exports `checkpoint` (a checkpoint folder, a run folder or its `latest` file) into `out`
/// (EMA weights unless `use_ema` is false), after verifying the checkpoint's checksums and
/// shapes.
pub fn export(
    checkpoint: &Path,
    out: &Path,
    use_ema: bool,
    dtype: ExportDtype,
    layout: ExportLayout,
) -> Result<ExportReport, TrainError> {
    let checkpoint = &checkpoint::resolve(checkpoint)?;
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
