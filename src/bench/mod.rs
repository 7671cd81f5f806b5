//! The measurements behind `saescope bench` and the drivers under
//! `eval/bench/`: model runtime with the machine's limits (`runtime`), SAE
//! training throughput and held-out FVU (`train`), steered generation speed
//! (`steer`). Each returns a report; the CLI prints it.

pub mod runtime;
pub mod steer;
pub mod train;
