//! The fast CPU path against the generic burn ops: outputs and every gradient, on Flex and
//! under autodiff.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};

use crate::generic;

type A = Autodiff<Flex>;

fn randn<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<A, D> {
    // Deterministic values without burn's global RNG: a fixed pseudo-random pattern.
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03))
                >> 40;
            (x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let _ = Distribution::Default;
    Tensor::from_data(burn::tensor::TensorData::new(v, shape), &Default::default())
}

fn max_diff<const D: usize>(a: Tensor<A, D>, b: Tensor<A, D>) -> f32 {
    let a: Vec<f32> = a.into_data().to_vec().unwrap();
    let b: Vec<f32> = b.into_data().to_vec().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `f` on fresh leaves (requiring grad) built by `make`, returns the output and the
/// gradients of `Σ output · weights` with respect to every leaf.
fn grads_of<const N: usize>(
    make: &dyn Fn() -> [Tensor<A, 4>; N],
    f: &dyn Fn([Tensor<A, 4>; N]) -> Tensor<A, 4>,
) -> (Tensor<A, 4>, Vec<Tensor<Flex, 4>>) {
    let leaves = make().map(|t| t.require_grad());
    let out = f(leaves.clone());
    let w = randn(out.dims(), 99);
    let grads = (out.clone() * w).sum().backward();
    let g = leaves
        .iter()
        .map(|l| l.grad(&grads).expect("leaf gradient"))
        .collect();
    (out, g)
}

fn assert_close(
    fast: (Tensor<A, 4>, Vec<Tensor<Flex, 4>>),
    slow: (Tensor<A, 4>, Vec<Tensor<Flex, 4>>),
    tol: f32,
) {
    let d = max_diff(fast.0, slow.0);
    assert!(d < tol, "outputs differ by {d}");
    for (i, (a, b)) in fast.1.into_iter().zip(slow.1).enumerate() {
        let a: Vec<f32> = a.into_data().to_vec().unwrap();
        let b: Vec<f32> = b.into_data().to_vec().unwrap();
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            d < tol * scale,
            "gradient {i} differs by {d} (scale {scale})"
        );
    }
}

#[test]
fn conv3x3_matches_burn_conv2d_with_gradients() {
    for (n, cin, cout, h, w) in [(2, 5, 7, 6, 9), (3, 16, 8, 8, 8), (1, 3, 4, 5, 5)] {
        let make = || {
            [
                randn([n, cin, h, w], 1),
                randn([cout, cin, 3, 3], 2),
                randn([1, 1, 1, cout], 3),
            ]
        };
        let run = |fast: bool| {
            move |[x, wt, b]: [Tensor<A, 4>; 3]| {
                let b = b.reshape([cout]);
                if fast {
                    crate::conv3x3(x, wt, Some(b))
                } else {
                    generic::conv3x3(x, wt, Some(b))
                }
            }
        };
        assert_close(
            grads_of(&make, &run(true)),
            grads_of(&make, &run(false)),
            1e-4,
        );
    }
    // Without bias, and on the plain (inference) backend.
    let x = randn([2, 4, 5, 6], 4).inner();
    let wt = randn([3, 4, 3, 3], 5).inner();
    let a: Vec<f32> = crate::conv3x3(x.clone(), wt.clone(), None)
        .into_data()
        .to_vec()
        .unwrap();
    let b: Vec<f32> = generic::conv3x3(x, wt, None).into_data().to_vec().unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4));
}

#[test]
fn group_norm_matches_the_burn_ops_with_gradients() {
    let (n, c, h, w, groups) = (3, 8, 5, 4, 4);
    let mask = randn([n, c, h, w], 7).inner().greater_elem(-0.6).float() * 1.25;
    for (silu, masked) in [(true, true), (true, false), (false, false)] {
        let make = || {
            [
                randn([n, c, h, w], 11) * 2.0 + 0.5,
                randn([1, 1, n, c], 12),
                randn([1, 1, n, c], 13),
            ]
        };
        let mask = masked.then(|| Tensor::<A, 4>::from_inner(mask.clone()));
        let run = |fast: bool| {
            let mask = mask.clone();
            move |[x, a, b]: [Tensor<A, 4>; 3]| {
                let (a, b) = (a.reshape([n, c]), b.reshape([n, c]));
                if fast {
                    crate::group_norm(x, groups, 1e-5, a, b, silu, mask.clone())
                } else {
                    generic::group_norm(x, groups, 1e-5, a, b, silu, mask.clone())
                }
            }
        };
        assert_close(
            grads_of(&make, &run(true)),
            grads_of(&make, &run(false)),
            2e-4,
        );
    }
}

#[test]
fn attention_matches_the_burn_ops_with_gradients() {
    let (n, heads, dh, s, l) = (2, 3, 4, 6, 9);
    let bias: Tensor<A, 2> = Tensor::from_inner(
        randn([1, 1, n, l], 21)
            .inner()
            .lower_elem(-0.5)
            .float()
            .reshape([n, l])
            * -10_000.0,
    );
    for with_bias in [true, false] {
        let make = || {
            [
                randn([n, heads, dh, s], 22),
                randn([n, heads, dh, l], 23),
                randn([n, heads, dh, l], 24),
            ]
        };
        let bias = with_bias.then(|| bias.clone());
        let run = |fast: bool| {
            let bias = bias.clone();
            move |[q, k, v]: [Tensor<A, 4>; 3]| {
                if fast {
                    crate::attention(q, k, v, bias.clone(), 0.5)
                } else {
                    generic::attention(q, k, v, bias.clone(), 0.5)
                }
            }
        };
        assert_close(
            grads_of(&make, &run(true)),
            grads_of(&make, &run(false)),
            1e-4,
        );
    }
}

#[test]
fn flex_backends_take_the_kernel_path() {
    use crate::flex::{path, Path};
    assert!(matches!(path::<A>(), Some(Path::Autodiff)));
    assert!(matches!(path::<Flex>(), Some(Path::Inference)));
    assert!(path::<
        Autodiff<Flex, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>,
    >()
    .is_none());
    // The kernel's result differs from burn's conv2d in the last bits (another summation
    // order): proof that the call did not fall back.
    let x = randn([2, 16, 8, 8], 31).inner();
    let wt = randn([16, 16, 3, 3], 32).inner();
    let a: Vec<f32> = crate::conv3x3(x.clone(), wt.clone(), None)
        .into_data()
        .to_vec()
        .unwrap();
    let b: Vec<f32> = generic::conv3x3(x, wt, None).into_data().to_vec().unwrap();
    assert_ne!(a, b);
}
