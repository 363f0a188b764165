// Per-layer descent-constraint values from residual norms (SPEC section 3), their
// backward, and the fused descent_constraints (norms + violations) for CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "../common/math.h"
#include "kernels.h"
#include "utils.h"

namespace sdu::cpu {
namespace {

// Mean of each row of r (L1, B), accumulated in double.
template <typename T>
std::vector<double> row_means(const T* r, int64_t L1, int64_t B) {
  std::vector<double> means(L1, 0.0);
  for (int64_t l = 0; l < L1; ++l) {
    double s = 0;
    for (int64_t b = 0; b < B; ++b) s += r[l * B + b];
    means[l] = s / static_cast<double>(B);
  }
  return means;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> descent_violations_cpu(const at::Tensor& norms, double eps,
                                                          c10::string_view form_name) {
  Form form = check_violations(norms, eps, form_name);
  int64_t L1 = norms.size(0), B = norms.size(1), L = L1 - 1;
  auto r = as_acc(norms).contiguous();
  auto values = at::empty({L}, r.options());
  auto per_sample = at::empty({L, B}, r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "descent_violations_cpu", [&] {
    using T = scalar_t;
    const T* rp = r.const_data_ptr<T>();
    T* vp = values.mutable_data_ptr<T>();
    T* pp = per_sample.mutable_data_ptr<T>();
    const T keep = static_cast<T>(1.0 - eps);
    auto means = row_means<T>(rp, L1, B);
    for (int64_t l = 0; l < L; ++l) {
      double s = 0;
      for (int64_t b = 0; b < B; ++b) {
        T v = descent_per_sample<T>(rp[l * B + b], rp[(l + 1) * B + b], keep, form);
        pp[l * B + b] = v;
        s += v;
      }
      if (form == Form::RatioOfMeans) {
        vp[l] = static_cast<T>(means[l + 1] / floored<double>(means[l]) - (1.0 - eps));
      } else {
        vp[l] = static_cast<T>(s / static_cast<double>(B));
      }
    }
  });
  auto dtype = norms.scalar_type();
  return {values.to(dtype), per_sample.to(dtype)};
}

namespace {

at::Tensor descent_violations_backward_cpu(const at::Tensor& grad, const at::Tensor& norms,
                                           double eps, c10::string_view form_name) {
  Form form = check_violations_backward(grad, norms, eps, form_name);
  int64_t L1 = norms.size(0), B = norms.size(1), L = L1 - 1;
  auto r = as_acc(norms).contiguous();
  auto g = grad.to(r.scalar_type()).contiguous();
  auto out = at::zeros_like(r);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "descent_violations_backward_cpu", [&] {
    using T = scalar_t;
    const T* rp = r.const_data_ptr<T>();
    const T* gp = g.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    const T keep = static_cast<T>(1.0 - eps);
    const T inv_b = B ? static_cast<T>(1.0 / static_cast<double>(B)) : T(0);
    auto means = row_means<T>(rp, L1, B);
    // Parallel over samples: each sample's column of the gradient is independent.
    at::parallel_for(0, B, 1024, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t l = 0; l < L; ++l) {
          T d_prev, d_cur;
          descent_sample_grads<T>(gp[l], rp[l * B + b], rp[(l + 1) * B + b], keep, form, inv_b,
                                  static_cast<T>(means[l]), static_cast<T>(means[l + 1]), &d_prev,
                                  &d_cur);
          op[l * B + b] += d_prev;
          op[(l + 1) * B + b] += d_cur;
        }
      }
    });
  });
  return out.to(norms.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> descent_constraints_cpu(
    const at::Tensor& iterates, const c10::optional<at::Tensor>& reference, double eps,
    c10::string_view form) {
  check_eps(eps);
  parse_form(form);
  auto norms = residual_norms_cpu(iterates, reference);
  auto [values, per_sample] = descent_violations_cpu(norms, eps, form);
  return {values, per_sample, norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CPU, m) {
  m.impl("descent_violations", &descent_violations_cpu);
  m.impl("descent_violations_backward", &descent_violations_backward_cpu);
  m.impl("descent_constraints", &descent_constraints_cpu);
}

}  // namespace sdu::cpu
