//! Weight initialisation from the project's keyed RNG instead of burn's global random stream.
//!
//! Models are built with burn's module configs (whatever initialiser they use), then
//! [`keyed_init`] redraws every random parameter from `KeyedRng(seed, "init", 0, i)` where `i` is
//! the parameter's position in the module: the same seed gives the same weights on every backend
//! and in every process. The distributions are PyTorch's defaults, which burn's defaults mirror:
//! `Linear` and `ConvNd` weights and biases `U(-1/√fan_in, 1/√fan_in)`, `Embedding` weights
//! `N(0, 1)`. Parameters that are constant after construction (norm gains and offsets,
//! zero-initialised output layers) carry no randomness and are kept. Any other parameter is
//! reported, so a model cannot silently fall back to the global stream.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use unclip_rng::KeyedRng;

struct KeyedInit {
    seed: u64,
    index: u64,
    /// (field, container type) of the enclosing modules.
    stack: Vec<(String, String)>,
    /// fan-in of the last weight seen, for the bias that follows it.
    fan_in: Option<usize>,
    unknown: Vec<String>,
}

enum Draw {
    Keep,
    Uniform(f64),
    Normal(f64),
}

impl KeyedInit {
    fn path(&self) -> String {
        self.stack
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    fn rule(&mut self, shape: &[usize]) -> Draw {
        let (field, container) = match self.stack.last() {
            Some((f, c)) => (f.as_str(), c.strip_prefix("Struct:").unwrap_or(c)),
            None => ("", ""),
        };
        let bound = |fan_in: usize| Draw::Uniform(1.0 / (fan_in.max(1) as f64).sqrt());
        match (container, field) {
            ("Linear", "weight") => {
                // burn stores Linear weights [in, out].
                self.fan_in = Some(shape[0]);
                bound(shape[0])
            }
            (c, "weight") if c.starts_with("Conv") => {
                // [out, in / groups, k…]
                let fan_in = shape[1..].iter().product();
                self.fan_in = Some(fan_in);
                bound(fan_in)
            }
            ("Linear", "bias") | (_, "bias")
                if container.starts_with("Conv") || container == "Linear" =>
            {
                match self.fan_in {
                    Some(f) => bound(f),
                    None => Draw::Keep,
                }
            }
            ("Embedding", "weight") => Draw::Normal(1.0),
            _ => Draw::Keep,
        }
    }
}

impl<B: Backend> ModuleMapper<B> for KeyedInit {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let index = self.index;
        self.index += 1;
        let shape = tensor.dims();
        let device = tensor.device();
        let draw = self.rule(&shape);
        let values: Vec<f32> = tensor
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let constant = values.windows(2).all(|w| w[0] == w[1]);
        let mut rng = KeyedRng::new(self.seed, "init", 0, index);
        let new: Vec<f32> = match draw {
            Draw::Keep if constant => return Param::from_mapped_value(id, tensor, mapper),
            Draw::Keep => {
                self.unknown.push(self.path());
                return Param::from_mapped_value(id, tensor, mapper);
            }
            Draw::Uniform(b) => (0..values.len())
                .map(|_| ((rng.uniform_f64() * 2.0 - 1.0) * b) as f32)
                .collect(),
            Draw::Normal(std) => (0..values.len())
                .map(|_| (rng.normal_f64() * std) as f32)
                .collect(),
        };
        let t = Tensor::from_data(TensorData::new(new, shape), &device);
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Redraw `module`'s random parameters from the keyed RNG (see the module docs). Errors with
/// the paths of parameters that are random but of no known kind.
pub fn keyed_init<B: Backend, M: Module<B>>(module: M, seed: u64) -> Result<M, Vec<String>> {
    let mut init = KeyedInit {
        seed,
        index: 0,
        stack: Vec::new(),
        fan_in: None,
        unknown: Vec::new(),
    };
    let module = module.map(&mut init);
    if init.unknown.is_empty() {
        Ok(module)
    } else {
        Err(init.unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        fc: Linear<B>,
        conv: Conv2d<B>,
        norm: LayerNorm<B>,
    }

    fn net(seed: u64) -> Net<Flex> {
        let d = Default::default();
        <Flex as Backend>::seed(&d, seed); // burn's stream must not matter
        let n = Net {
            fc: LinearConfig::new(50, 7).init(&d),
            conv: Conv2dConfig::new([3, 8], [3, 3]).init(&d),
            norm: LayerNormConfig::new(7).init(&d),
        };
        keyed_init(n, 11).unwrap()
    }

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn weights_depend_on_our_seed_only_and_follow_pytorch_bounds() {
        let (a, b) = (net(1), net(2));
        assert_eq!(values(a.fc.weight.val()), values(b.fc.weight.val()));
        assert_eq!(values(a.conv.weight.val()), values(b.conv.weight.val()));
        let w = values(a.fc.weight.val());
        let bound = 1.0 / 50f32.sqrt();
        assert!(w.iter().all(|x| x.abs() <= bound));
        assert!(w.iter().any(|x| x.abs() > 0.8 * bound));
        let cb = values(a.conv.bias.as_ref().unwrap().val());
        assert!(cb.iter().all(|x| x.abs() <= 1.0 / 27f32.sqrt()));
        assert!(values(a.norm.gamma.val()).iter().all(|&x| x == 1.0));
        let d = Default::default();
        let other = keyed_init(
            Net::<Flex> {
                fc: LinearConfig::new(50, 7).init(&d),
                conv: Conv2dConfig::new([3, 8], [3, 3]).init(&d),
                norm: LayerNormConfig::new(7).init(&d),
            },
            12,
        )
        .unwrap();
        assert_ne!(values(a.fc.weight.val()), values(other.fc.weight.val()));
    }

    #[derive(Module, Debug)]
    struct Odd<B: Backend> {
        table: Param<Tensor<B, 2>>,
    }

    #[test]
    fn random_parameters_of_unknown_kind_are_reported() {
        let d = Default::default();
        let odd = Odd::<Flex> {
            table: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.1f32, 0.2, 0.3, 0.4], [2, 2]),
                &d,
            )),
        };
        assert_eq!(keyed_init(odd, 0).unwrap_err(), ["table"]);
        let zeros = Odd::<Flex> {
            table: Param::from_tensor(Tensor::zeros([2, 2], &d)),
        };
        assert!(keyed_init(zeros, 0).is_ok());
    }
}
