// The NCCL half of saescope's c10d shim: a ProcessGroupNCCL on the same
// rendezvous and group handle as the Gloo half (c10d_shim.cpp), so that the
// collectives there serve both. Compiled only where the linked libtorch has
// CUDA (libtorch_cuda.so) and NCCL's and the CUDA runtime's headers are found
// (the nvidia-nccl-cu13 and nvidia-cuda-runtime wheels that the pinned torch
// wheel installs), with USE_C10D_NCCL defined as in the wheel's build; the
// same ABI assumptions as c10d_shim.cpp.

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdlib>

#include "c10d_shim.h"

using saescope_shim::guarded;

extern "C" {

// Rendezvous at host:port and an NCCL group of `world` ranks on CUDA device
// `device`. Operations block until done and give up after `timeout_ms`
// (TORCH_NCCL_BLOCKING_WAIT, unless the environment already sets it).
saescope_group* saescope_nccl_new(const char* host, uint16_t port, int rank,
                                  int world, int agent_store, int device,
                                  int64_t timeout_ms, char* err, size_t err_len) {
  saescope_group* out = nullptr;
  guarded(err, err_len, [&] {
    setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto store = saescope_shim::rendezvous(host, port, rank, world, agent_store,
                                           timeout);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    auto group =
        c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
    out = new saescope_group{store, group, timeout};
  });
  return out;
}

}  // extern "C"
