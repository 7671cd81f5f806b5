//! What machine saescope runs on, and what it may use there: the CPU's
//! instruction tier (detected, or lowered by `SAESCOPE_CPU`) that the
//! hand-written kernels dispatch on, libtorch's own view of the CPU (its
//! version, ATen capability, oneDNN ISA, MKL), the CUDA devices, and the one
//! record of all of it that `saescope info` prints and every benchmark stores,
//! and the memory limits a job checks its big allocations against.
//! Nothing here depends on the rest of the library.

pub mod cpu;
pub mod cuda;
pub mod info;
pub mod libtorch;
pub mod memory;
pub mod vectorize;

pub use cpu::CpuTier;
pub use info::MachineInfo;
