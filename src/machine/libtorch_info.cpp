// What libtorch reports about itself, behind a C ABI for Rust.
//
// ABI assumptions (checked at link time: a mismatch is an undefined symbol,
// never a wrong call):
// - the functions below are declared as in torch 2.11's ATen/Version.h, free
//   functions in namespace `at` returning std::string; they are declared here
//   rather than by including that header because it pulls in ATen/Context.h,
//   which would add tens of seconds to every clean build for four prototypes;
// - libtorch is built with the C++11 std::string ABI (_GLIBCXX_USE_CXX11_ABI=1,
//   as every PyPI wheel since torch 2.7), so the mangled names carry [abi:cxx11];
// - no C++ exception crosses into Rust: each call is wrapped in try/catch.
#include <cstring>
#include <string>

namespace at {
std::string show_config();
std::string get_mkl_version();
std::string get_mkldnn_version();
std::string get_cpu_capability();
}  // namespace at

extern "C" {

// Copies the answer to query `which` (0: show_config, 1: MKL version,
// 2: oneDNN version, 3: ATen CPU capability) into `buf` (up to `len` - 1
// bytes and a NUL). Returns the answer's full length, or -1 for an unknown
// query or an exception inside libtorch.
long saescope_libtorch_info(int which, char* buf, long len) {
  std::string text;
  try {
    switch (which) {
      case 0: text = at::show_config(); break;
      case 1: text = at::get_mkl_version(); break;
      case 2: text = at::get_mkldnn_version(); break;
      case 3: text = at::get_cpu_capability(); break;
      default: return -1;
    }
  } catch (...) {
    return -1;
  }
  if (buf != nullptr && len > 0) {
    size_t n = text.size() < static_cast<size_t>(len - 1) ? text.size() : static_cast<size_t>(len - 1);
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  return static_cast<long>(text.size());
}

}  // extern "C"
