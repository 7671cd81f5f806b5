//! Hand-written CPU engineering behind the forward pass: the fused decode step
//! that runs whole blocks on host rows, matrix–vector products, fused
//! normalisation/rotary/softmax/SwiGLU kernels, the thread team on libtorch's
//! OpenMP threads, and allocator tuning. Each kernel has a libtorch twin in
//! `transformer`/`layers` that it is tested against; nothing here knows hooks.

pub mod alloc;
pub mod decode_step;
pub mod fused_ops;
pub mod gemv;
pub mod host;
pub mod step_ops;
pub mod team;
pub mod torch_threads;
mod work_shares;
