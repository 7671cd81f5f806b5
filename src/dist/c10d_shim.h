// What the two halves of saescope's c10d shim share: the group handle
// (a c10d backend, Gloo or NCCL, with its rendezvous store and timeout), the
// rendezvous itself, and the guard that turns C++ exceptions into error
// strings. See c10d_shim.cpp for the ABI assumptions.

#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

struct saescope_group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> group;
  std::chrono::milliseconds timeout;
};

namespace saescope_shim {

inline void write_error(const std::string& message, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, message.c_str(), err_len - 1);
  err[err_len - 1] = '\0';
}

template <typename F>
int guarded(char* err, size_t err_len, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    write_error(e.what(), err, err_len);
  } catch (...) {
    write_error("unknown C++ exception in c10d", err, err_len);
  }
  return 1;
}

// The rendezvous store at host:port, served by rank 0 unless the launcher's
// agent serves it (`agent_store`).
inline c10::intrusive_ptr<c10d::Store> rendezvous(const char* host, uint16_t port,
                                                  int rank, int world,
                                                  int agent_store,
                                                  std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions opts;
  opts.port = port;
  opts.isServer = rank == 0 && agent_store == 0;
  opts.numWorkers = world;
  opts.waitWorkers = true;
  opts.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
}

}  // namespace saescope_shim
