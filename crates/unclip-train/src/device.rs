//! The device named in the config, chosen at run time. Model and loop code stay generic over
//! the backend; this is the one place that names concrete backends.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;

use crate::TrainError;

/// A parsed `devices:` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Vulkan(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda:N` or `vulkan:N` (`cuda` and `vulkan` mean index 0).
    pub fn parse(s: &str) -> Result<Self, TrainError> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>().map_err(|_| {
                    TrainError::invalid("devices", format!("`{s}`: the index must be a number"))
                })?,
            ),
            None => (s, 0),
        };
        match kind {
            "cpu" if !s.contains(':') => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(index)),
            "vulkan" => Ok(DeviceSpec::Vulkan(index)),
            _ => Err(TrainError::invalid(
                "devices",
                format!("unknown device `{s}`; expected cpu, cuda:N or vulkan:N"),
            )),
        }
    }
}

/// Work that runs on whichever backend the config picks.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output, TrainError>;
}

/// Work that runs on several devices of one backend (data-parallel training).
pub trait DevicesJob {
    type Output;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output, TrainError>;
}

/// A [`BackendJob`] as a [`DevicesJob`] of one device.
struct One<J>(J);

impl<J: BackendJob> DevicesJob for One<J> {
    type Output = J::Output;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<J::Output, TrainError> {
        let device = devices
            .into_iter()
            .next()
            .ok_or_else(|| TrainError::invalid("devices", "list at least one device"))?;
        self.0.run::<B>(device)
    }
}

/// Runs `job` on the backend of `spec`; a backend that was not compiled in is an error
/// naming the cargo feature to enable.
pub fn dispatch<J: BackendJob>(spec: DeviceSpec, job: J) -> Result<J::Output, TrainError> {
    dispatch_all(&[spec], One(job))
}

/// Runs `job` on the devices of `specs`, which must all be of one kind (one backend).
pub fn dispatch_all<J: DevicesJob>(specs: &[DeviceSpec], job: J) -> Result<J::Output, TrainError> {
    let first = *specs
        .first()
        .ok_or_else(|| TrainError::invalid("devices", "list at least one device"))?;
    let same = |s: &DeviceSpec| std::mem::discriminant(s) == std::mem::discriminant(&first);
    if !specs.iter().all(same) {
        return Err(TrainError::invalid(
            "devices",
            format!("{specs:?}: every device of a run must be of one kind (cpu, cuda or vulkan)"),
        ));
    }
    match first {
        DeviceSpec::Cpu => job.run::<Autodiff<Flex>>(vec![Default::default(); specs.len()]),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => job.run::<Autodiff<burn::backend::Cuda>>(
            specs
                .iter()
                .filter_map(|s| match s {
                    DeviceSpec::Cuda(index) => {
                        Some(burn::backend::cuda::CudaDevice { index: *index })
                    }
                    _ => None,
                })
                .collect(),
        ),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(index) => Err(TrainError::BackendNotCompiled(
            format!("cuda:{index}"),
            "cuda",
        )),
        #[cfg(feature = "vulkan")]
        DeviceSpec::Vulkan(_) => job.run::<Autodiff<burn::backend::Vulkan>>(
            specs
                .iter()
                .filter_map(|s| match s {
                    DeviceSpec::Vulkan(index) => {
                        Some(burn::backend::wgpu::WgpuDevice::DiscreteGpu(*index))
                    }
                    _ => None,
                })
                .collect(),
        ),
        #[cfg(not(feature = "vulkan"))]
        DeviceSpec::Vulkan(index) => Err(TrainError::BackendNotCompiled(
            format!("vulkan:{index}"),
            "vulkan",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(DeviceSpec::parse("cpu").ok(), Some(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda:1").ok(), Some(DeviceSpec::Cuda(1)));
        assert_eq!(
            DeviceSpec::parse("vulkan").ok(),
            Some(DeviceSpec::Vulkan(0))
        );
        for bad in ["gpu", "cuda:x", "cpu:0"] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        struct Nothing;
        impl BackendJob for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _: B::Device) -> Result<(), TrainError> {
                Ok(())
            }
        }
        let e = dispatch(DeviceSpec::Cuda(0), Nothing)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("device `cuda:0` needs the `cuda` cargo feature: rebuild with `--features cuda`")
        );
    }
}
