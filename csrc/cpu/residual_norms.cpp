// Per-layer, per-sample residual norms ||iterates[l, b] - reference[b]|| of a
// stacked (L+1, B, m) tensor, and their backward (one pass over the iterates).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"
#include "kernels.h"
#include "vec_utils.h"

namespace sdu::cpu {
namespace {

using at::vec::Vectorized;

template <typename T>
T squared_distance(const T* a, const T* r, int64_t m) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t i = 0;
  if (r) {
    for (; i + V::size() <= m; i += V::size()) {
      V d = V::loadu(a + i) - V::loadu(r + i);
      acc = at::vec::fmadd(d, d, acc);
    }
  } else {
    for (; i + V::size() <= m; i += V::size()) {
      V d = V::loadu(a + i);
      acc = at::vec::fmadd(d, d, acc);
    }
  }
  T s = at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, acc);
  for (; i < m; ++i) {
    T d = a[i] - (r ? r[i] : T(0));
    s += d * d;
  }
  return s;
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
std::tuple<at::Tensor, at::Tensor> residual_norms_backward_cpu(
    const at::Tensor& grad, const at::Tensor& iterates, const c10::optional<at::Tensor>& reference,
    const at::Tensor& norms) {
  check_iterates(iterates, reference);
  int64_t L1 = iterates.size(0), B = iterates.size(1), m = iterates.size(2);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == L1 && grad.size(1) == B,
              "grad: expected shape (", L1, ", ", B, ") = (L+1, B), got ", shape_str(grad.sizes()));
  TORCH_CHECK(norms.sizes() == grad.sizes(), "norms: expected shape ", shape_str(grad.sizes()),
              ", got ", shape_str(norms.sizes()));
  bool has_ref = has_reference(reference);
  auto it = as_acc(iterates).contiguous();
  auto g_it = at::empty_like(it, at::MemoryFormat::Contiguous);
  at::Tensor ref, g_ref;
  if (has_ref) {
    ref = as_acc(*reference).contiguous();
    g_ref = at::empty_like(ref, at::MemoryFormat::Contiguous);
  }
  if (it.numel() > 0) {
    auto scale = (grad.to(it.scalar_type()) / norms.to(it.scalar_type()))
                     .masked_fill(norms == 0, 0)
                     .contiguous();
    AT_DISPATCH_FLOATING_TYPES(it.scalar_type(), "residual_norms_backward_cpu", [&] {
      using T = scalar_t;
      using V = Vectorized<T>;
      const T* ip = it.const_data_ptr<T>();
      const T* rp = has_ref ? ref.const_data_ptr<T>() : nullptr;
      const T* sp = scale.const_data_ptr<T>();
      T* gp = g_it.mutable_data_ptr<T>();
      T* grp = has_ref ? g_ref.mutable_data_ptr<T>() : nullptr;
      int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(m * L1, 1));
      // Parallel over samples: each task owns its reference-gradient rows.
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* r = rp ? rp + b * m : nullptr;
          T* gr = grp ? grp + b * m : nullptr;
          if (gr) std::fill(gr, gr + m, T(0));
          for (int64_t l = 0; l < L1; ++l) {
            const T* a = ip + (l * B + b) * m;
            T* ga = gp + (l * B + b) * m;
            const V s(sp[l * B + b]);
            int64_t i = 0;
            for (; i + V::size() <= m; i += V::size()) {
              V d = r ? V::loadu(a + i) - V::loadu(r + i) : V::loadu(a + i);
              V v = d * s;
              v.store(ga + i);
              if (gr) (V::loadu(gr + i) - v).store(gr + i);
            }
            for (; i < m; ++i) {
              T v = (a[i] - (r ? r[i] : T(0))) * sp[l * B + b];
              ga[i] = v;
              if (gr) gr[i] -= v;
            }
          }
        }
      });
    });
  } else if (has_ref) {
    g_ref.zero_();
  }
  auto dtype = iterates.scalar_type();
  return {g_it.to(dtype), has_ref ? g_ref.to(dtype) : at::empty({0}, iterates.options())};
}

TORCH_LIBRARY_IMPL(sdu, CPU, m) {
  m.impl("residual_norms", &residual_norms_cpu);
  m.impl("residual_norms_backward", &residual_norms_backward_cpu);
}

}  // namespace sdu::cpu
