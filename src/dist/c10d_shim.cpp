// The C ABI through which saescope reaches libtorch's c10d: a TCPStore for
// rendezvous and a Gloo process group (NCCL: nccl_shim.cpp) with the
// collectives both share, on tch tensors (`at::Tensor*`, which is what tch's
// `C_tensor` is).
//
// ABI assumptions, checked by the build and the tests: compiled against the
// headers of the libtorch that tch links (same version, C++17,
// _GLIBCXX_USE_CXX11_ABI=1 as the pinned wheel), with Gloo's own headers from
// Debian's libgloo-dev (the wheel lacks them) and USE_C10D_GLOO defined as in
// the wheel's build. Errors never cross the boundary as exceptions: each call
// catches, writes the message into `err` and returns a failure value.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "c10d_shim.h"

using saescope_shim::guarded;

extern "C" {

// Rendezvous at host:port (served by rank 0, or by the launcher's agent when
// `agent_store`) and a Gloo group of `world` ranks whose operations time out
// after `timeout_ms`. Gloo's own connections use network interface `iface`
// when it is not empty (as GLOO_SOCKET_IFNAME does for PyTorch), else the
// master's address when it is a loopback one, else this machine's default.
saescope_group* saescope_gloo_new(const char* host, uint16_t port, int rank,
                                  int world, int agent_store, const char* iface,
                                  int64_t timeout_ms, char* err, size_t err_len) {
  saescope_group* out = nullptr;
  guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = saescope_shim::rendezvous(host, port, rank, world, agent_store,
                                           timeout);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string interface(iface);
    std::string master(host);
    bool loopback = master == "localhost" || master.rfind("127.", 0) == 0;
    options->devices.push_back(
        !interface.empty()
            ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
            : loopback ? c10d::ProcessGroupGloo::createDeviceForHostname(master)
                       : c10d::ProcessGroupGloo::createDefaultDevice());
    options->threads = 1;
    auto group =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    out = new saescope_group{store, group, timeout};
  });
  return out;
}

void saescope_gloo_free(saescope_group* g) { delete g; }

// Sums `*t` over the ranks, in place.
int saescope_all_reduce_sum(saescope_group* g, at::Tensor* t, char* err,
                            size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    g->group->allreduce(tensors, opts)->wait(g->timeout);
  });
}

// Copies rank `root`'s `*t` into every rank's, in place.
int saescope_broadcast(saescope_group* g, at::Tensor* t, int root, char* err,
                       size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    g->group->broadcast(tensors, opts)->wait(g->timeout);
  });
}

// `outs[r]` = rank r's `*t`, for `world` preallocated tensors like `*t`.
int saescope_all_gather(saescope_group* g, at::Tensor* t, at::Tensor** outs,
                        int world, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<at::Tensor> inputs{*t};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < world; ++r) outputs[0].push_back(*outs[r]);
    g->group->allgather(outputs, inputs)->wait(g->timeout);
  });
}

// Rows of `*input` to each rank by `send_rows`, received into `*output` by
// `recv_rows` (both `world` long; first dimension split).
int saescope_all_to_all(saescope_group* g, at::Tensor* output,
                        at::Tensor* input, const int64_t* recv_rows,
                        const int64_t* send_rows, int world, char* err,
                        size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<int64_t> out_split(recv_rows, recv_rows + world);
    std::vector<int64_t> in_split(send_rows, send_rows + world);
    at::Tensor out = *output;
    at::Tensor in = *input;
    g->group->alltoall_base(out, in, out_split, in_split)->wait(g->timeout);
  });
}

int saescope_barrier(saescope_group* g, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    g->group->barrier(opts)->wait(g->timeout);
  });
}

// Sets `key` in the rendezvous store (to "1").
int saescope_store_set(saescope_group* g, const char* key, char* err,
                       size_t err_len) {
  return guarded(err, err_len, [&] { g->store->set(std::string(key), "1"); });
}

// Whether `key` is in the rendezvous store: 1 yes, 0 no, -1 on error.
int saescope_store_check(saescope_group* g, const char* key, char* err,
                         size_t err_len) {
  bool found = false;
  if (guarded(err, err_len, [&] {
        found = g->store->check(std::vector<std::string>{std::string(key)});
      }) != 0) {
    return -1;
  }
  return found ? 1 : 0;
}

}  // extern "C"
