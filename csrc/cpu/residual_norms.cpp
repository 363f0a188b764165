// Per-layer, per-sample residual norms ||iterates[l, b] - reference[b]|| of a
// stacked (L+1, B, m) tensor, and their backward (one pass over the iterates).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"
#include "kernels.h"
#include "utils.h"

namespace sdu::cpu {
namespace {

// Plain loops with `omp simd` reductions: the compiler vectorises them for the
// build's instruction set (see soft_threshold.cpp).
template <typename T>
SDU_MULTIVERSION T squared_distance(const T* __restrict a, const T* __restrict r, int64_t m) {
  T s = 0;
  if (r) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < m; ++i) s += (a[i] - r[i]) * (a[i] - r[i]);
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < m; ++i) s += a[i] * a[i];
  }
  return s;
}

// Sample b's rows: g_it[l, b] = s[l, b] (it[l, b] - ref[b]) for every layer l,
// and g_ref[b] = -sum_l g_it[l, b] when gr is given (r given, gr null: the
// reference gradient is not wanted and never written).
template <typename T>
SDU_MULTIVERSION void backward_sample(const T* ip, const T* r, const T* sp, T* gp, T* gr,
                                      int64_t L1, int64_t B, int64_t m, int64_t b) {
  if (gr) std::fill(gr, gr + m, T(0));
  for (int64_t l = 0; l < L1; ++l) {
    const T* __restrict a = ip + (l * B + b) * m;
    T* __restrict ga = gp + (l * B + b) * m;
    const T s = sp[l * B + b];
    if (r && gr) {
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) {
        T v = (a[i] - r[i]) * s;
        ga[i] = v;
        gr[i] -= v;
      }
    } else if (r) {
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) ga[i] = (a[i] - r[i]) * s;
    } else {
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) ga[i] = a[i] * s;
    }
  }
}

// Parallel over samples, so each task owns its reference-gradient rows.
template <typename T>
void backward_kernel(const T* ip, const T* rp, const T* sp, T* gp, T* grp, int64_t L1, int64_t B,
                     int64_t m) {
  int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(m * L1, 1));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      backward_sample<T>(ip, rp ? rp + b * m : nullptr, sp, gp, grp ? grp + b * m : nullptr, L1, B,
                         m, b);
    }
  });
}

}  // namespace

at::Tensor residual_norms_cpu(const at::Tensor& iterates, const c10::optional<at::Tensor>& reference) {
  check_iterates(iterates, reference);
  int64_t L1 = iterates.size(0), B = iterates.size(1), m = iterates.size(2);
  auto it = as_acc(iterates).contiguous();
  bool has_ref = has_reference(reference);
  at::Tensor ref = has_ref ? as_acc(*reference).contiguous() : at::Tensor();
  auto out = at::empty({L1, B}, it.options());
  if (out.numel() == 0) return out.to(iterates.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(it.scalar_type(), "residual_norms_cpu", [&] {
    const scalar_t* ip = it.const_data_ptr<scalar_t>();
    const scalar_t* rp = has_ref ? ref.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(m, 1));
    at::parallel_for(0, L1 * B, grain, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const scalar_t* r = rp ? rp + (row % B) * m : nullptr;
        op[row] = std::sqrt(squared_distance<scalar_t>(ip + row * m, r, m));
      }
    });
  });
  return out.to(iterates.scalar_type());
}

// grad_iterates[l, b] = grad[l, b] / norms[l, b] * (iterates[l, b] - reference[b])
// (zero where the norm is zero), grad_reference[b] = -sum_l grad_iterates[l, b].
// Without a reference, or with reference_grad false, grad_reference is not
// computed and an empty (0,) tensor is returned in its place.
std::tuple<at::Tensor, at::Tensor> residual_norms_backward_cpu(
    const at::Tensor& grad, const at::Tensor& iterates, const c10::optional<at::Tensor>& reference,
    const at::Tensor& norms, bool reference_grad) {
  check_residual_norms_backward(grad, iterates, reference, norms);
  int64_t L1 = iterates.size(0), B = iterates.size(1), m = iterates.size(2);
  bool has_ref = has_reference(reference);
  bool want_ref = has_ref && reference_grad;
  auto it = as_acc(iterates).contiguous();
  auto g_it = new_output_like(it);
  at::Tensor ref, g_ref;
  if (has_ref) ref = as_acc(*reference).contiguous();
  if (want_ref) g_ref = new_output_like(ref);
  if (it.numel() > 0) {
    auto scale = (grad.to(it.scalar_type()) / norms.to(it.scalar_type()))
                     .masked_fill(norms == 0, 0)
                     .contiguous();
    AT_DISPATCH_FLOATING_TYPES(it.scalar_type(), "residual_norms_backward_cpu", [&] {
      backward_kernel<scalar_t>(it.const_data_ptr<scalar_t>(),
                                has_ref ? ref.const_data_ptr<scalar_t>() : nullptr,
                                scale.const_data_ptr<scalar_t>(), g_it.mutable_data_ptr<scalar_t>(),
                                want_ref ? g_ref.mutable_data_ptr<scalar_t>() : nullptr, L1, B, m);
    });
  } else if (want_ref) {
    g_ref.zero_();
  }
  auto dtype = iterates.scalar_type();
  return {g_it.to(dtype), want_ref ? g_ref.to(dtype) : at::empty({0}, iterates.options())};
}

TORCH_LIBRARY_IMPL(sdu, CPU, m) {
  m.impl("residual_norms", &residual_norms_cpu);
  m.impl("residual_norms_backward", &residual_norms_backward_cpu);
}

}  // namespace sdu::cpu
