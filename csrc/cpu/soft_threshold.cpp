// Soft-thresholding y = sign(x) max(|x| - theta, 0): forward, in-place forward and
// the fused backward (grad_x and grad_theta in one pass, from the output alone).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "vec_utils.h"

namespace sdu::cpu {
namespace {

using at::vec::Vectorized;

// n contiguous elements; theta is one value (th_const) or n values.
template <typename T>
void forward_segment(const T* x, const T* th, bool th_const, T* y, int64_t n) {
  using V = Vectorized<T>;
  const V zero(T(0));
  const V tc(th[0]);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    V xv = V::loadu(x + i);
    V tv = th_const ? tc : V::loadu(th + i);
    V m = at::vec::maximum(xv.abs() - tv, zero);
    V r = V::blendv(zero, m, xv > zero);
    r = V::blendv(r, zero - m, xv < zero);
    r = V::blendv(r, xv, xv.isnan());
    r.store(y + i);
  }
  for (; i < n; ++i) y[i] = soft_threshold_value<T>(x[i], th_const ? th[0] : th[i]);
}

// grad_x = g * (y != 0); d theta accumulates -g * sign(y), into gth[i] (per
// element) or, when gth is null, into the returned sum.
template <typename T>
double backward_segment(const T* g, const T* y, T* gx, T* gth, int64_t n) {
  using V = Vectorized<T>;
  const V zero(T(0));
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    V gv = V::loadu(g + i);
    V yv = V::loadu(y + i);
    V::blendv(zero, gv, yv != zero).store(gx + i);
    V d = V::blendv(zero, zero - gv, yv > zero);
    d = V::blendv(d, gv, yv < zero);
    if (gth) {
      (V::loadu(gth + i) + d).store(gth + i);
    } else {
      acc = acc + d;
    }
  }
  double sum = 0;
  if (!gth) {
    T lanes[V::size()];
    acc.store(lanes);
    for (int64_t k = 0; k < V::size(); ++k) sum += lanes[k];
  }
  for (; i < n; ++i) {
    gx[i] = y[i] != T(0) ? g[i] : T(0);
    T d = soft_threshold_dtheta<T>(g[i], y[i]);
    if (gth) gth[i] += d; else sum += d;
  }
  return sum;
}

// Splits the flat range [begin, end) at row boundaries so Row-mode theta is a
// contiguous vector inside each call.
template <typename F>
void for_row_segments(int64_t begin, int64_t end, int64_t d, const F& f) {
  int64_t i = begin;
  while (i < end) {
    int64_t col = i % d;
    int64_t len = std::min(end - i, d - col);
    f(i, col, len);
    i += len;
  }
}

template <typename T>
void forward_kernel(const T* x, const T* th, T* y, int64_t n, int64_t d, ThetaMode mode) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    if (mode == ThetaMode::Scalar) {
      forward_segment<T>(x + b, th, true, y + b, e - b);
    } else if (mode == ThetaMode::Full) {
      forward_segment<T>(x + b, th + b, false, y + b, e - b);
    } else {
      for_row_segments(b, e, d, [&](int64_t i, int64_t col, int64_t len) {
        forward_segment<T>(x + i, th + col, false, y + i, len);
      });
    }
  });
}

// x_acc: contiguous x in the accumulation dtype; writes into out (same dtype).
void forward_into(const at::Tensor& x_acc, const at::Tensor& theta, ThetaMode mode, at::Tensor& out) {
  auto th = theta_for_kernel(x_acc, theta, mode);
  int64_t n = x_acc.numel();
  int64_t d = x_acc.dim() ? x_acc.size(-1) : 1;
  AT_DISPATCH_FLOATING_TYPES(x_acc.scalar_type(), "soft_threshold_cpu", [&] {
    forward_kernel<scalar_t>(x_acc.const_data_ptr<scalar_t>(), th.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(), n, d, mode);
  });
}

at::Tensor soft_threshold_cpu(const at::Tensor& x, const at::Tensor& theta) {
  check_floating(x, "x");
  auto mode = check_theta(x, theta);
  if (x.numel() == 0) return at::empty_like(x, at::MemoryFormat::Contiguous);
  auto xa = as_acc(x).contiguous();
  auto out = at::empty_like(xa, at::MemoryFormat::Contiguous);
  forward_into(xa, theta, mode, out);
  return is_reduced(x) ? out.to(x.scalar_type()) : out;
}

at::Tensor& soft_threshold_inplace_cpu(at::Tensor& x, const at::Tensor& theta) {
  check_floating(x, "x");
  auto mode = check_theta(x, theta);
  if (x.numel() == 0) return x;
  if (!is_reduced(x) && x.is_contiguous()) {
    forward_into(x, theta, mode, x);
  } else {
    x.copy_(soft_threshold_cpu(x, theta));
  }
  return x;
}

std::tuple<at::Tensor, at::Tensor> soft_threshold_backward_cpu(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& theta) {
  check_floating(y, "y");
  check_floating(grad, "grad");
  TORCH_CHECK(grad.sizes() == y.sizes(), "grad: expected shape ", shape_str(y.sizes()),
              " (same as y), got ", shape_str(grad.sizes()));
  auto mode = check_theta(y, theta);
  auto acc_type = at::toOpMathType(y.scalar_type());
  if (y.numel() == 0) {
    return {at::zeros_like(y, at::MemoryFormat::Contiguous), at::zeros_like(theta)};
  }
  auto ga = as_acc(grad).to(acc_type).contiguous();
  auto ya = as_acc(y).contiguous();
  auto gx = at::empty_like(ya, at::MemoryFormat::Contiguous);
  int64_t n = ya.numel();
  int64_t d = ya.dim() ? ya.size(-1) : 1;
  int nthreads = at::get_num_threads();
  at::Tensor gth;
  AT_DISPATCH_FLOATING_TYPES(ya.scalar_type(), "soft_threshold_backward_cpu", [&] {
    using T = scalar_t;
    const T* g = ga.const_data_ptr<T>();
    const T* yp = ya.const_data_ptr<T>();
    T* gxp = gx.mutable_data_ptr<T>();
    if (mode == ThetaMode::Scalar) {
      std::vector<double> partial(nthreads, 0.0);
      at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
        double s = 0;
        // Sum in blocks so float lanes never accumulate more than a block.
        for (int64_t i = b; i < e; i += 4096) {
          int64_t len = std::min<int64_t>(4096, e - i);
          s += backward_segment<T>(g + i, yp + i, gxp + i, nullptr, len);
        }
        partial[at::get_thread_num()] += s;
      });
      double total = 0;
      for (double p : partial) total += p;
      gth = at::full({1}, total, ya.options().dtype(at::kDouble));
    } else if (mode == ThetaMode::Full) {
      gth = at::zeros_like(ya);
      T* gt = gth.mutable_data_ptr<T>();
      at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
        backward_segment<T>(g + b, yp + b, gxp + b, gt + b, e - b);
      });
    } else {
      // One accumulation row per thread, summed afterwards in the accumulation dtype.
      auto rows = at::zeros({nthreads, d}, ya.options());
      T* rp = rows.mutable_data_ptr<T>();
      at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
        T* acc = rp + at::get_thread_num() * d;
        for_row_segments(b, e, d, [&](int64_t i, int64_t col, int64_t len) {
          backward_segment<T>(g + i, yp + i, gxp + i, acc + col, len);
        });
      });
      gth = rows.sum(0, false, at::kDouble);
    }
  });
  auto grad_x = is_reduced(y) ? gx.to(y.scalar_type()) : gx;
  return {grad_x, theta_grad_to_shape(gth, theta, mode)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CPU, m) {
  m.impl("soft_threshold", &soft_threshold_cpu);
  m.impl("soft_threshold_", &soft_threshold_inplace_cpu);
  m.impl("soft_threshold_backward", &soft_threshold_backward_cpu);
}

}  // namespace sdu::cpu
