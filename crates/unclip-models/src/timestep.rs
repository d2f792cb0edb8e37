//! Sinusoidal timestep embedding (ADM / guided-diffusion `timestep_embedding`) and the MLP
//! that follows it in every unCLIP network: sinusoid(C) → Linear(4C) → SiLU → Linear(4C).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// `[len(t), dim]`: `cat(cos(t·f), sin(t·f))` with `f_k = exp(−ln(max_period)·k/half)`,
/// computed in f64; an odd `dim` gets a zero last column (as in ADM).
pub fn timestep_embedding<B: Backend>(
    t: &[f64],
    dim: usize,
    max_period: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(t.len() * dim);
    for &step in t {
        let freq = |k: usize| (-(max_period.ln()) * k as f64 / half as f64).exp();
        out.extend((0..half).map(|k| (step * freq(k)).cos() as f32));
        out.extend((0..half).map(|k| (step * freq(k)).sin() as f32));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(out, [t.len(), dim]), device)
}

#[derive(Config, Debug)]
pub struct TimestepMlpConfig {
    /// Width C of the sinusoid; the output has `4·C` channels.
    pub channels: usize,
}

/// sinusoid(C) → Linear(C, 4C) → SiLU → Linear(4C, 4C).
#[derive(Module, Debug)]
pub struct TimestepMlp<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
    #[module(skip)]
    pub channels: usize,
}

impl TimestepMlpConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> TimestepMlp<B> {
        let c = self.channels;
        TimestepMlp {
            linear_1: LinearConfig::new(c, 4 * c).init(device),
            linear_2: LinearConfig::new(4 * c, 4 * c).init(device),
            channels: c,
        }
    }
}

impl<B: Backend> TimestepMlp<B> {
    /// `[len(t), 4C]` for timesteps `t` (the original, un-respaced step numbers).
    pub fn forward(&self, t: &[f64], device: &B::Device) -> Tensor<B, 2> {
        let emb = timestep_embedding::<B>(t, self.channels, 10_000.0, device);
        self.linear_2.forward(silu(self.linear_1.forward(emb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn matches_adm_formula() {
        let d = Default::default();
        let e = timestep_embedding::<Flex>(&[0.0, 3.0], 5, 10_000.0, &d);
        let v: Vec<f32> = e.into_data().to_vec().unwrap();
        // t = 0: cos = 1, sin = 0; odd dim pads a zero.
        assert_eq!(&v[..5], &[1.0, 1.0, 0.0, 0.0, 0.0]);
        // t = 3, half = 2: freqs 1 and 10000^(-1/2) = 0.01.
        let want = [3f64.cos(), 0.03f64.cos(), 3f64.sin(), 0.03f64.sin(), 0.0];
        for (g, w) in v[5..].iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn mlp_output_shape() {
        let d = Default::default();
        let mlp = TimestepMlpConfig::new(8).init::<Flex>(&d);
        assert_eq!(mlp.forward(&[1.0, 2.0, 999.0], &d).dims(), [3, 32]);
    }
}
