// One untied LISTA layer: soft_threshold(y W1^T + xs W2^T, theta). The products go
// to the backend BLAS (MKL/OpenBLAS on CPU, cuBLAS on CUDA) and accumulate into a
// single buffer, which is then thresholded in place by the backend's kernel. The
// same code serves every backend, so it is registered for CPU and CUDA alike.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/checks.h"

namespace sdu {
namespace {

void check_matrix(const at::Tensor& t, const char* name, int64_t rows, int64_t cols,
                  const char* what, const at::Tensor& y) {
  check_floating(t, name);
  check_same_dtype(t, name, y, "y");
  check_same_device(t, name, y, "y");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, msg(name,
              ": expected shape (", rows, ", ", cols, ") = ", what, ", got ",
              shape_str(t.sizes())));
}

at::Tensor lista_layer(const at::Tensor& y, const at::Tensor& xs, const at::Tensor& W1,
                       const at::Tensor& W2, const at::Tensor& theta) {
  check_floating(y, "y");
  check_dim(y, "y", 2, "(B, m)");
  check_floating(xs, "xs");
  check_dim(xs, "xs", 2, "(B, n)");
  int64_t B = y.size(0), m = y.size(1), n = xs.size(1);
  check_matrix(xs, "xs", B, n, "(B, n) with B from y", y);
  check_matrix(W1, "W1", m, m, "(m, m) with m from y", y);
  check_matrix(W2, "W2", m, n, "(m, n) with m from y and n from xs", y);
  check_theta(y, theta, "y");

  auto out = at::mm(y, W1.t());
  out.addmm_(xs, W2.t());
  static auto threshold = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("sdu::soft_threshold_", "")
                              .typed<void(at::Tensor&, const at::Tensor&)>();
  threshold.call(out, theta);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CPU, m) { m.impl("lista_layer", &lista_layer); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(sdu, CUDA, m) { m.impl("lista_layer", &lista_layer); }
#endif

}  // namespace sdu
