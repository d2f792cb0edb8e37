//! The CPU path: the [`crate::cpu`] kernels on burn-flex tensors, registered with burn's
//! autodiff graph as operations with their own backward.
//!
//! [`fast`] recognises `Flex` and `Autodiff<Flex>` at run time (by `TypeId`; the public functions
//! stay generic over any backend) and moves the tensors over without copying. Only f32 tensors
//! take this path; other dtypes fall back to the generic burn ops.

use std::any::{Any, TypeId};
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use crate::cpu::attention::{self as attn, AttnShape};
use crate::cpu::conv::{self, ConvShape};
use crate::cpu::norm::{self, NormShape, Stats};

type Ad = Autodiff<Flex>;
/// burn-autodiff's tensor over Flex (its type is not exported under a name).
type AdTensor = FloatTensor<Ad>;

/// Which fast path a backend gets.
pub(crate) enum Path {
    Inference,
    Autodiff,
}

/// `Some` when `B` is `Flex` or `Autodiff<Flex>`.
pub(crate) fn path<B: Backend>() -> Option<Path> {
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Some(Path::Inference)
    } else if id == TypeId::of::<Ad>() {
        Some(Path::Autodiff)
    } else {
        None
    }
}

/// Moves a value to the type it is (checked by the caller through [`path`]).
fn cast<T: 'static, U: 'static>(t: T) -> U {
    let boxed: Box<dyn Any> = Box::new(t);
    *boxed
        .downcast::<U>()
        .expect("fast path taken for a different backend")
}

/// A burn float tensor of backend `B` (Flex or Autodiff<Flex>) as the backend's primitive.
pub(crate) fn prim<B: Backend, P: 'static, const D: usize>(t: Tensor<B, D>) -> P {
    let p: TensorPrimitive<B> = t.into_primitive();
    match p {
        TensorPrimitive::Float(p) => cast(p),
        TensorPrimitive::QFloat(_) => unreachable!("quantized tensors do not take the fast path"),
    }
}

pub(crate) fn tensor<B: Backend, P: 'static, const D: usize>(p: P) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(cast::<P, B::FloatTensorPrimitive>(
        p,
    )))
}

/// Whether every tensor is plain f32 (the kernels' only dtype).
pub(crate) fn all_f32<B: Backend, const D: usize>(ts: &[Option<&Tensor<B, D>>]) -> bool {
    ts.iter().flatten().all(|t| t.dtype() == DType::F32)
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn flex(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// An untracked autodiff tensor (for an absent optional input).
fn untracked(v: Vec<f32>, shape: &[usize]) -> AdTensor {
    <Ad as AutodiffBackend>::from_inner(flex(v, shape))
}

/// Registers `output` as the result of `op` over `inputs`, keeping `state` for the backward
/// pass when any input needs a gradient.
fn record<Op, S, const N: usize>(
    op: Op,
    inputs: [&AdTensor; N],
    state: impl FnOnce() -> S,
    output: FlexTensor,
) -> AdTensor
where
    Op: Backward<Flex, N, State = S>,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    match op
        .prepare::<NoCheckpointing>(inputs.map(|t| t.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

// ---------------------------------------------------------------- 3×3 convolution

#[derive(Debug, Clone)]
struct ConvState {
    plane: Arc<Vec<f32>>,
    weight: FlexTensor,
    shape: ConvShape,
}

#[derive(Debug)]
struct Conv3x3;

impl Backward<Flex, 3> for Conv3x3 {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw, nb] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let need = [nx.is_some(), nw.is_some(), nb.is_some()];
        let g = conv::backward(slice(&dy), &st.plane, slice(&st.weight), st.shape, need);
        let ConvShape { n, cin, cout, h, w } = st.shape;
        if let (Some(node), Some(v)) = (nx, g.x) {
            grads.register::<Flex>(node.id, flex(v, &[n, cin, h, w]));
        }
        if let (Some(node), Some(v)) = (nw, g.weight) {
            grads.register::<Flex>(node.id, flex(v, &[cout, cin, 3, 3]));
        }
        if let (Some(node), Some(v)) = (nb, g.bias) {
            grads.register::<Flex>(node.id, flex(v, &[cout]));
        }
    }
}

fn conv_shape(x: &FlexTensor, w: &FlexTensor) -> ConvShape {
    let [n, cin, h, wd]: [usize; 4] = dims(x).try_into().expect("4-d input");
    let cout = dims(w)[0];
    ConvShape {
        n,
        cin,
        cout,
        h,
        w: wd,
    }
}

pub(crate) fn conv3x3_inference(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> FlexTensor {
    let (x, w, b) = (contiguous(x), contiguous(w), b.map(contiguous));
    let shape = conv_shape(&x, &w);
    let (y, _) = conv::forward(slice(&x), slice(&w), b.as_ref().map(slice), shape);
    flex(y, &[shape.n, shape.cout, shape.h, shape.w])
}

pub(crate) fn conv3x3_autodiff(x: AdTensor, w: AdTensor, b: Option<AdTensor>) -> AdTensor {
    let xf = contiguous(x.primitive.clone());
    let wf = contiguous(w.primitive.clone());
    let shape = conv_shape(&xf, &wf);
    let b = b.unwrap_or_else(|| untracked(vec![0.0; shape.cout], &[shape.cout]));
    let bf = contiguous(b.primitive.clone());
    let (y, plane) = conv::forward(slice(&xf), slice(&wf), Some(slice(&bf)), shape);
    let out = flex(y, &[shape.n, shape.cout, shape.h, shape.w]);
    record(
        Conv3x3,
        [&x, &w, &b],
        || ConvState {
            plane: Arc::new(plane),
            weight: wf,
            shape,
        },
        out,
    )
}

// ---------------------------------------------------------------- GroupNorm + activation

#[derive(Debug, Clone)]
struct NormState {
    x: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    mask: Option<FlexTensor>,
    stats: Arc<Stats>,
    silu: bool,
    shape: NormShape,
}

#[derive(Debug)]
struct GroupNormAct;

impl Backward<Flex, 3> for GroupNormAct {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, na, nb] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let (dx, da, db) = norm::backward(
            slice(&dy),
            slice(&st.x),
            &st.stats,
            slice(&st.a),
            slice(&st.b),
            st.mask.as_ref().map(slice),
            st.silu,
            st.shape,
        );
        let nc = [st.shape.n, st.shape.c];
        if let Some(node) = nx {
            grads.register::<Flex>(node.id, flex(dx, &dims(&st.x)));
        }
        if let Some(node) = na {
            grads.register::<Flex>(node.id, flex(da, &nc));
        }
        if let Some(node) = nb {
            grads.register::<Flex>(node.id, flex(db, &nc));
        }
    }
}

/// Arguments of the fused GroupNorm besides its tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormArgs {
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

fn norm_shape(x: &FlexTensor, groups: usize) -> NormShape {
    let d = dims(x);
    NormShape {
        n: d[0],
        c: d[1],
        s: d[2..].iter().product(),
        groups,
    }
}

pub(crate) fn group_norm_inference(
    x: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    mask: Option<FlexTensor>,
    args: NormArgs,
) -> FlexTensor {
    let (x, a, b, mask) = (
        contiguous(x),
        contiguous(a),
        contiguous(b),
        mask.map(contiguous),
    );
    let shape = norm_shape(&x, args.groups);
    let (y, _) = norm::forward(
        slice(&x),
        slice(&a),
        slice(&b),
        mask.as_ref().map(slice),
        args.silu,
        args.eps,
        shape,
    );
    flex(y, &dims(&x))
}

pub(crate) fn group_norm_autodiff(
    x: AdTensor,
    a: AdTensor,
    b: AdTensor,
    mask: Option<FlexTensor>,
    args: NormArgs,
) -> AdTensor {
    let xf = contiguous(x.primitive.clone());
    let af = contiguous(a.primitive.clone());
    let bf = contiguous(b.primitive.clone());
    let mask = mask.map(contiguous);
    let shape = norm_shape(&xf, args.groups);
    let (y, stats) = norm::forward(
        slice(&xf),
        slice(&af),
        slice(&bf),
        mask.as_ref().map(slice),
        args.silu,
        args.eps,
        shape,
    );
    let out = flex(y, &dims(&xf));
    record(
        GroupNormAct,
        [&x, &a, &b],
        || NormState {
            x: xf,
            a: af,
            b: bf,
            mask,
            stats: Arc::new(stats),
            silu: args.silu,
            shape,
        },
        out,
    )
}

// ---------------------------------------------------------------- attention

#[derive(Debug, Clone)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    p: Arc<Vec<f32>>,
    scale: f32,
    shape: AttnShape,
}

#[derive(Debug)]
struct Attention;

impl Backward<Flex, 3> for Attention {
    type State = AttnState;

    fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nq, nk, nv] = ops.parents;
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let (dq, dk, dv) = attn::backward(
            slice(&dout),
            slice(&st.q),
            slice(&st.k),
            slice(&st.v),
            &st.p,
            st.scale,
            st.shape,
        );
        for (node, g, like) in [(nq, dq, &st.q), (nk, dk, &st.k), (nv, dv, &st.v)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(g, &dims(like)));
            }
        }
    }
}

fn attn_shape(q: &FlexTensor, k: &FlexTensor) -> AttnShape {
    let [n, heads, dh, s]: [usize; 4] = dims(q).try_into().expect("4-d queries");
    AttnShape {
        batch: n * heads,
        heads,
        dh,
        s,
        l: dims(k)[3],
    }
}

pub(crate) fn attention_inference(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: Option<FlexTensor>,
    scale: f32,
) -> FlexTensor {
    let (q, k, v, bias) = (
        contiguous(q),
        contiguous(k),
        contiguous(v),
        bias.map(contiguous),
    );
    let shape = attn_shape(&q, &k);
    let (o, _) = attn::forward(
        slice(&q),
        slice(&k),
        slice(&v),
        bias.as_ref().map(slice),
        scale,
        shape,
    );
    flex(o, &dims(&q))
}

pub(crate) fn attention_autodiff(
    q: AdTensor,
    k: AdTensor,
    v: AdTensor,
    bias: Option<FlexTensor>,
    scale: f32,
) -> AdTensor {
    let qf = contiguous(q.primitive.clone());
    let kf = contiguous(k.primitive.clone());
    let vf = contiguous(v.primitive.clone());
    let bias = bias.map(contiguous);
    let shape = attn_shape(&qf, &kf);
    let (o, p) = attn::forward(
        slice(&qf),
        slice(&kf),
        slice(&vf),
        bias.as_ref().map(slice),
        scale,
        shape,
    );
    let out = flex(o, &dims(&qf));
    record(
        Attention,
        [&q, &k, &v],
        || AttnState {
            q: qf,
            k: kf,
            v: vf,
            p: Arc::new(p),
            scale,
            shape,
        },
        out,
    )
}

/// The inner Flex tensor of an autodiff tensor that needs no gradient (masks, biases).
pub(crate) fn inner(t: AdTensor) -> FlexTensor {
    <Ad as AutodiffBackend>::inner(t)
}
