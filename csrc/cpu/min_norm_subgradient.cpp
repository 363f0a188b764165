// Minimum-norm subgradient of g + alpha ||.||_1 at y given grad = grad g(y), and
// its backward with respect to grad (the value is piecewise constant in y).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/math.h"
#include "utils.h"

namespace sdu::cpu {
namespace {

template <typename T, typename F>
void loop(const T* __restrict a, const T* __restrict b, const T* __restrict c, T* __restrict out,
          int64_t begin, int64_t end, const F& f) {
  if (c) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) out[i] = f(a[i], b[i], c[i]);
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) out[i] = f(a[i], b[i], T(0));
  }
}

// f(g, y, grad_out) over contiguous accumulation-dtype copies, in parallel.
template <typename F>
at::Tensor elementwise(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const F& f) {
  auto out = new_output_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "min_norm_subgradient_cpu", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* cp = c.defined() ? c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), kGrain, [&](int64_t s, int64_t e) { loop(ap, bp, cp, op, s, e, f); });
  });
  return out;
}

at::Tensor min_norm_subgradient_cpu(const at::Tensor& grad, const at::Tensor& y, double alpha) {
  check_subgradient(grad, y, alpha);
  auto g = as_acc(grad).contiguous();
  auto yy = as_acc(y).contiguous();
  auto out = elementwise(g, yy, at::Tensor(), [alpha](auto gv, auto yv, auto) {
    using T = decltype(gv);
    return min_norm_subgradient_value<T>(gv, yv, static_cast<T>(alpha));
  });
  return out.to(grad.scalar_type());
}

at::Tensor min_norm_subgradient_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad,
                                             const at::Tensor& y, double alpha) {
  check_subgradient_backward(grad_out, grad, y, alpha);
  auto g = as_acc(grad).contiguous();
  auto go = as_acc(grad_out).to(g.scalar_type()).contiguous();
  auto yy = as_acc(y).contiguous();
  auto out = elementwise(g, yy, go, [alpha](auto gv, auto yv, auto gov) {
    using T = decltype(gv);
    return min_norm_subgradient_passes<T>(gv, yv, static_cast<T>(alpha)) ? gov : T(0);
  });
  return out.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CPU, m) {
  m.impl("min_norm_subgradient", &min_norm_subgradient_cpu);
  m.impl("min_norm_subgradient_backward", &min_norm_subgradient_backward_cpu);
}

}  // namespace sdu::cpu
