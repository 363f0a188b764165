// Soft-thresholding y = sign(x) max(|x| - theta, 0): forward, in-place forward and
// the fused backward (grad_x and grad_theta in one pass, from the output alone).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "utils.h"

namespace sdu::cpu {
namespace {

// The segment loops are written for the compiler's auto-vectoriser (branch-free
// selects, `omp simd` reductions) and multi-versioned (utils.h): on this
// memory-bound op that matches hand-written at::vec code in a portable build.

// y = soft(x, theta) over n contiguous elements; theta is one value (th_const) or n values.
template <typename T>
SDU_MULTIVERSION void forward_segment(const T* __restrict x, const T* __restrict th, bool th_const, T* y, int64_t n) {
  if (th_const) {
    const T t = th[0];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      y[i] = soft_threshold_value<T>(x[i], t);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      y[i] = soft_threshold_value<T>(x[i], th[i]);
    }
  }
}

// grad_x = g * (y != 0); d theta = -g * sign(y), accumulated into gth[i] (per
// element) or, when gth is null, into the returned sum.
template <typename T>
SDU_MULTIVERSION double backward_segment(const T* __restrict g, const T* __restrict y, T* __restrict gx,
                        T* __restrict gth, int64_t n) {
  if (gth) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      gx[i] = y[i] != T(0) ? g[i] : T(0);
      gth[i] += soft_threshold_dtheta<T>(g[i], y[i]);
    }
    return 0.0;
  }
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    gx[i] = y[i] != T(0) ? g[i] : T(0);
    sum += soft_threshold_dtheta<T>(g[i], y[i]);
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
  auto out = new_output_like(xa);
  forward_into(xa, theta, mode, out);
  return is_reduced(x) ? out.to(x.scalar_type()) : out;
}

void soft_threshold_inplace_cpu(at::Tensor& x, const at::Tensor& theta) {
  check_floating(x, "x");
  auto mode = check_theta(x, theta);
  check_inplace_overlap(x, theta);
  if (x.numel() == 0) return;
  if (!is_reduced(x) && x.is_contiguous()) {
    forward_into(x, theta, mode, x);
  } else {
    x.copy_(soft_threshold_cpu(x, theta));
  }
}

std::tuple<at::Tensor, at::Tensor> soft_threshold_backward_cpu(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& theta) {
  auto mode = check_soft_threshold_backward(grad, y, theta);
  auto acc_type = at::toOpMathType(y.scalar_type());
  if (y.numel() == 0) {
    return {at::zeros_like(y, at::MemoryFormat::Contiguous), at::zeros_like(theta)};
  }
  auto ga = as_acc(grad).to(acc_type).contiguous();
  auto ya = as_acc(y).contiguous();
  auto gx = new_output_like(ya);
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
