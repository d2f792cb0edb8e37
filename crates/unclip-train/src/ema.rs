//! The exponential moving average of the weights, kept beside the model (same parameter ids),
//! plus the two parameter walks the trainer needs around it: deterministic ids and a
//! finiteness check.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::config::EmaConfig;

/// Numbers the parameters 0, 1, 2… in module order, initialising every lazy parameter on
/// the way. Ids then do not depend on the process, so checkpoints of two runs compare
/// byte for byte, and a clone made afterwards shares the initial values.
pub fn renumber_params<B: Backend, M: burn::module::Module<B>>(module: M) -> M {
    struct Renumber(u64);
    impl<B: Backend> ModuleMapper<B> for Renumber {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0 - 1), tensor, mapper)
        }
    }
    module.map(&mut Renumber(0))
}

/// Whether every float parameter is finite.
pub fn all_finite<B: Backend, M: burn::module::Module<B>>(module: &M) -> bool {
    struct Finite(bool);
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0 {
                let v = param.val();
                use burn::tensor::ElementConversion;
                let nan: bool = v.clone().is_nan().any().into_scalar().elem();
                let inf: bool = v.is_inf().any().into_scalar().elem();
                self.0 = !(nan || inf);
            }
        }
    }
    let mut f = Finite(true);
    module.visit(&mut f);
    f.0
}

/// EMA of a model's weights; its parameters carry the model's ids.
#[derive(Clone)]
pub struct Ema<M> {
    pub model: M,
    cfg: EmaConfig,
}

impl<M> Ema<M> {
    pub fn new(model: M, cfg: EmaConfig) -> Self {
        Self { model, cfg }
    }
}

impl<M: Clone> Ema<M> {
    /// Folds `model` in after optimizer step `step` (1-based): a copy until
    /// `update_after_step`, then `ema ← d·ema + (1−d)·model` every `update_every` steps.
    pub fn update<B: AutodiffBackend>(&mut self, model: &M, step: u64)
    where
        M: AutodiffModule<B>,
    {
        if step <= self.cfg.update_after_step {
            self.model = model.clone();
            return;
        }
        if step.checked_rem(self.cfg.update_every.0) != Some(0) {
            return;
        }
        struct Collect<'a>(&'a mut GradientsParams);
        impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.register(param.id, param.val().inner());
            }
        }
        struct Blend<'a> {
            src: &'a mut GradientsParams,
            decay: f64,
        }
        impl<B: AutodiffBackend> ModuleMapper<B> for Blend<'_> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let (id, tensor, mapper) = param.consume();
                let t = match self.src.remove::<B::InnerBackend, D>(id) {
                    Some(m) => Tensor::from_inner(
                        tensor.inner().mul_scalar(self.decay) + m.mul_scalar(1.0 - self.decay),
                    ),
                    None => tensor,
                };
                Param::from_mapped_value(id, t, mapper)
            }
        }
        let mut src = GradientsParams::new();
        model.visit(&mut Collect(&mut src));
        let ema = std::mem::replace(&mut self.model, model.clone());
        self.model = ema.map(&mut Blend {
            src: &mut src,
            decay: self.cfg.decay.0,
        });
    }
}

/// Parameter values by id, for tests and export.
pub fn param_values<B: Backend, M: burn::module::Module<B>>(module: &M) -> HashMap<u64, Vec<f32>> {
    struct Values(HashMap<u64, Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            self.0.insert(param.id.val(), v);
        }
    }
    let mut v = Values(HashMap::new());
    module.visit(&mut v);
    v.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AtLeastOne, Fraction};
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::tensor::TensorData;

    type AB = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct P<B: Backend> {
        w: Param<Tensor<B, 1>>,
    }

    fn p(v: f32) -> P<AB> {
        let t = Tensor::from_data(TensorData::new(vec![v], [1]), &Default::default());
        P {
            w: Param::initialized(ParamId::from(0), t),
        }
    }

    fn value(m: &P<AB>) -> f32 {
        m.w.val().into_scalar()
    }

    #[test]
    fn copies_then_averages_every_n_steps() {
        let cfg = EmaConfig {
            enabled: true,
            decay: Fraction(0.9),
            update_after_step: 1,
            update_every: AtLeastOne(2),
        };
        let mut ema = Ema::new(p(0.0), cfg);
        ema.update::<AB>(&p(10.0), 1); // ≤ update_after_step: copy
        assert_eq!(value(&ema.model), 10.0);
        ema.update::<AB>(&p(20.0), 2); // 0.9·10 + 0.1·20
        assert!((value(&ema.model) - 11.0).abs() < 1e-6);
        ema.update::<AB>(&p(50.0), 3); // not a multiple of 2: unchanged
        assert!((value(&ema.model) - 11.0).abs() < 1e-6);
        assert!(all_finite::<AB, _>(&ema.model));
        assert!(!all_finite::<AB, _>(&p(f32::NAN)));
    }

    #[test]
    fn renumbering_is_deterministic() {
        let a = renumber_params(p(1.0));
        assert_eq!(a.w.id, ParamId::from(0));
    }
}
