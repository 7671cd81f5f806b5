//! Several processes working as one, on libtorch's own distributed engine
//! (c10d, as PyTorch DDP and `torchrun` use it): the rank and world size from
//! the launcher's environment (`launch`), a process group with its
//! collectives on tch tensors (`group`, through the C++ shim `c10d_shim.cpp`
//! that `build.rs` compiles), and `saescope launch`'s own launcher
//! (`launcher`). The trainer and the harvest call this layer;
//! it knows nothing of SAEs or models.

pub mod group;
pub mod launch;
pub mod launcher;

pub use group::ProcessGroup;
pub use launch::Launch;
