//! The kernels themselves, on plain `f32` slices in the UNet's layouts (NCHW, contiguous).
//! Each has a forward and a backward function and a test against its definition.

pub(crate) mod attention;
pub(crate) mod conv;
mod gemm;
mod math;
pub(crate) mod norm;
