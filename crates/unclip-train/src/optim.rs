//! AdamW as PyTorch defines it, on burn's pieces: burn's AdamW update (the same formula) with
//! its own weight decay off, decoupled decay applied here to the parameters that should decay
//! (not norms, biases or embeddings), global-norm clipping and gradient averaging over
//! micro-batches (burn clips per tensor and has no accumulation that averages).

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use crate::config::{LrDecay, OptimConfig};

/// The learning rate of optimizer step `step` (0-based): linear warm-up from 0 over
/// `warmup_steps`, then a half-cosine to `min_lr` at `max_steps`, or constant.
pub fn lr_at(cfg: &OptimConfig, step: u64) -> f64 {
    let lr = cfg.lr.0;
    let s = &cfg.lr_schedule;
    if step < s.warmup_steps {
        return lr * (step + 1) as f64 / s.warmup_steps as f64;
    }
    match s.decay {
        LrDecay::Constant => lr,
        LrDecay::Cosine => {
            let span = cfg.max_steps.0.saturating_sub(s.warmup_steps).max(1) as f64;
            let progress = ((step - s.warmup_steps) as f64 / span).min(1.0);
            s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// burn's AdamW with PyTorch's β, ε and the decay left to [`apply_weight_decay`].
pub fn adamw<B: AutodiffBackend, M: AutodiffModule<B>>(
    cfg: &OptimConfig,
) -> OptimizerAdaptor<AdamW, M, B> {
    AdamWConfig::new()
        .with_beta_1(cfg.beta1.0 as f32)
        .with_beta_2(cfg.beta2.0 as f32)
        .with_epsilon(cfg.eps.0 as f32)
        .with_weight_decay(0.0)
        .init()
}

/// Path-aware walk over a module's float parameters.
struct Paths<F> {
    stack: Vec<String>,
    f: F,
}

impl<B: Backend, F: FnMut(&[String], ParamId, usize)> ModuleVisitor<B> for Paths<F> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        (self.f)(&self.stack, param.id, D);
    }
}

/// Calls `f(path, id, rank)` for every float parameter, in module order.
pub fn for_each_param<B: Backend, M: burn::module::Module<B>>(
    module: &M,
    f: impl FnMut(&[String], ParamId, usize),
) {
    module.visit(&mut Paths {
        stack: Vec::new(),
        f,
    });
}

/// The parameters that get weight decay: matrices and kernels (rank ≥ 2) outside norms and
/// embeddings — the rule of minGPT, DALLE2-pytorch and diffusers' training scripts.
pub fn decay_set<B: Backend, M: burn::module::Module<B>>(module: &M) -> HashSet<ParamId> {
    let mut out = HashSet::new();
    for_each_param::<B, M>(module, |path, id, rank| {
        let excluded = path.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            p.contains("norm") || p.contains("emb")
        });
        if rank >= 2 && !excluded {
            out.insert(id);
        }
    });
    out
}

/// Multiplies the parameters in `ids` by `factor` (decoupled decay: `1 − lr·wd`).
pub fn apply_weight_decay<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    ids: &HashSet<ParamId>,
    factor: f64,
) -> M {
    struct Decay<'a> {
        ids: &'a HashSet<ParamId>,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Decay<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            if !self.ids.contains(&id) {
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let require_grad = tensor.is_require_grad();
            let mut t = Tensor::from_inner(tensor.inner().mul_scalar(self.factor));
            if require_grad {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    if factor == 1.0 {
        return module;
    }
    module.map(&mut Decay { ids, factor })
}

/// Operations over a gradient set, one parameter at a time.
enum GradOp<'a> {
    /// `acc += new` (moved out of `new`).
    Add(&'a mut GradientsParams),
    Scale(f64),
    SquaredNorm,
}

struct GradVisitor<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    op: GradOp<'a>,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        match &mut self.op {
            GradOp::Add(new) => {
                if let Some(n) = new.remove::<B::InnerBackend, D>(id) {
                    let v = match self.grads.remove::<B::InnerBackend, D>(id) {
                        Some(acc) => acc + n,
                        None => n,
                    };
                    self.grads.register(id, v);
                }
            }
            GradOp::Scale(f) => {
                if let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) {
                    self.grads.register(id, g.mul_scalar(*f));
                }
            }
            GradOp::SquaredNorm => {
                if let Some(g) = self.grads.get::<B::InnerBackend, D>(id) {
                    let s = g.square().sum();
                    self.sum = Some(match self.sum.take() {
                        Some(acc) => acc + s,
                        None => s,
                    });
                }
            }
        }
    }
}

fn run<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    op: GradOp<'_>,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut v = GradVisitor::<B> {
        grads,
        op,
        sum: None,
    };
    model.visit(&mut v);
    v.sum
}

/// `acc += new`, parameter by parameter.
pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    acc: &mut GradientsParams,
    mut new: GradientsParams,
) {
    run::<B, M>(model, acc, GradOp::Add(&mut new));
}

/// Every gradient times `factor`.
pub fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    run::<B, M>(model, grads, GradOp::Scale(factor));
}

/// The L2 norm of all gradients together (NaN or ∞ when any gradient is).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
) -> f64 {
    match run::<B, M>(model, grads, GradOp::SquaredNorm) {
        Some(s) => s.into_scalar().elem::<f64>().sqrt(),
        None => 0.0,
    }
}

/// PyTorch's `clip_grad_norm_`: scale by `max / (norm + 1e-6)` when that is below 1.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AtLeastOne, Fraction, LrSchedule, Positive};
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::optim::Optimizer;
    use burn::tensor::TensorData;

    type AB = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        weight: Param<Tensor<B, 2>>,
        bias: Param<Tensor<B, 1>>,
        layer_norm: Param<Tensor<B, 2>>,
    }

    const W: [f32; 4] = [0.5, -1.0, 2.0, 0.25];
    const GW: [f32; 4] = [0.1, -0.2, 0.3, 1.5];
    const GB: [f32; 2] = [-0.7, 0.05];

    fn net() -> Net<AB> {
        let d = Default::default();
        Net {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(W.to_vec(), [2, 2]), &d)),
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, -3.0], [2]),
                &d,
            )),
            layer_norm: Param::from_tensor(Tensor::from_data(
                TensorData::new(W.to_vec(), [2, 2]),
                &d,
            )),
        }
    }

    /// Loss whose gradients are the constants GW, GB (and GW for the norm).
    fn grads(n: &Net<AB>) -> GradientsParams {
        let d = Default::default();
        let gw = Tensor::<AB, 2>::from_data(TensorData::new(GW.to_vec(), [2, 2]), &d);
        let gb = Tensor::<AB, 1>::from_data(TensorData::new(GB.to_vec(), [2]), &d);
        let loss = (n.weight.val() * gw.clone()).sum()
            + (n.bias.val() * gb).sum()
            + (n.layer_norm.val() * gw).sum();
        GradientsParams::from_grads(loss.backward(), n)
    }

    fn cfg() -> OptimConfig {
        OptimConfig {
            lr: Positive(0.1),
            weight_decay: 0.5,
            ..OptimConfig::default()
        }
    }

    /// torch.optim.AdamW, written out in f64 (decay first, then the Adam update).
    fn torch_adamw(p0: &[f32], g: &[f32], steps: i32, decay: bool) -> Vec<f64> {
        let (lr, wd, b1, b2, eps) = (0.1, 0.5, 0.9f64, 0.999f64, 1e-8);
        p0.iter()
            .zip(g)
            .map(|(&p, &g)| {
                let (mut p, g, mut m, mut v) = (p as f64, g as f64, 0.0, 0.0);
                for t in 1..=steps {
                    if decay {
                        p *= 1.0 - lr * wd;
                    }
                    m = b1 * m + (1.0 - b1) * g;
                    v = b2 * v + (1.0 - b2) * g * g;
                    let (mh, vh) = (m / (1.0 - b1.powi(t)), v / (1.0 - b2.powi(t)));
                    p -= lr * mh / (vh.sqrt() + eps);
                }
                p
            })
            .collect()
    }

    fn close(got: Tensor<AB, 2>, want: &[f64]) {
        let got: Vec<f32> = got.into_data().to_vec().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() < 1e-6 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn two_steps_match_torch_adamw_and_skip_decay_on_bias_and_norm() {
        let c = cfg();
        let mut n = net();
        let ids = decay_set::<AB, _>(&n);
        assert_eq!(ids, HashSet::from([n.weight.id]));
        let mut optim = adamw::<AB, Net<AB>>(&c);
        for _ in 0..2 {
            let g = grads(&n);
            n = apply_weight_decay(n, &ids, 1.0 - 0.1 * 0.5);
            n = optim.step(0.1, n, g);
        }
        close(n.weight.val(), &torch_adamw(&W, &GW, 2, true));
        close(n.layer_norm.val(), &torch_adamw(&W, &GW, 2, false));
        close(
            n.bias.val().reshape([1, 2]),
            &torch_adamw(&[1.0, -3.0], &GB, 2, false),
        );
    }

    #[test]
    fn global_norm_clip_and_averaging() {
        let n = net();
        let mut g = grads(&n);
        let want = GW
            .iter()
            .chain(&GW)
            .chain(&GB)
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>();
        assert!((global_norm::<AB, _>(&n, &mut g) - want.sqrt()).abs() < 1e-6);
        accumulate::<AB, _>(&n, &mut g, grads(&n));
        scale::<AB, _>(&n, &mut g, 0.5); // mean of two equal micro-batches = one
        assert!((global_norm::<AB, _>(&n, &mut g) - want.sqrt()).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, 1.0), 1.0 / (4.0 + 1e-6));
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
    }

    #[test]
    fn warmup_then_cosine_or_constant() {
        let mut c = OptimConfig {
            lr: Positive(1.0),
            max_steps: AtLeastOne(12),
            lr_schedule: LrSchedule {
                warmup_steps: 2,
                min_lr: 0.1,
                ..LrSchedule::default()
            },
            ..OptimConfig::default()
        };
        assert_eq!(lr_at(&c, 0), 0.5);
        assert_eq!(lr_at(&c, 1), 1.0);
        assert_eq!(lr_at(&c, 2), 1.0);
        assert!((lr_at(&c, 7) - 0.55).abs() < 1e-12); // halfway between 1 and 0.1
        assert!((lr_at(&c, 12) - 0.1).abs() < 1e-12);
        c.lr_schedule.decay = LrDecay::Constant;
        assert_eq!(lr_at(&c, 11), 1.0);
        let _ = Fraction(0.0);
    }
}
