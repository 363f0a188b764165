// CUDA descent-constraint values from residual norms (L+1, B): one block per layer
// reduces over the batch; the backward is elementwise over (L+1, B) once the row
// means are known. descent_constraints chains the residual-norm kernel in front.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/math.h"
#include "kernels.h"
#include "utils.cuh"

namespace sdu::cuda {
namespace {

// means[l] = mean_b r[l, b], accumulated in double; one block per row.
template <typename T>
__global__ void row_means_kernel(const T* __restrict__ r, double* __restrict__ means, int64_t B) {
  double acc = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) acc += static_cast<double>(r[blockIdx.x * B + b]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) means[blockIdx.x] = acc / static_cast<double>(B);
}

template <typename T>
__global__ void violations_kernel(const T* __restrict__ r, const double* __restrict__ means, T* __restrict__ values,
                                  T* __restrict__ per_sample, int64_t B, double keep, Form form) {
  using A = at::opmath_type<T>;
  const int64_t l = blockIdx.x;
  double acc = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    A v = descent_per_sample<A>(static_cast<A>(r[l * B + b]), static_cast<A>(r[(l + 1) * B + b]),
                                static_cast<A>(keep), form);
    per_sample[l * B + b] = static_cast<T>(v);
    acc += static_cast<double>(v);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    double v = form == Form::RatioOfMeans ? means[l + 1] / floored<double>(means[l]) - keep
                                          : acc / static_cast<double>(B);
    values[l] = static_cast<T>(v);
  }
}

template <typename T>
__global__ void violations_backward_kernel(const T* __restrict__ grad, const T* __restrict__ r,
                                           const double* __restrict__ means, T* __restrict__ out, int64_t L1,
                                           int64_t B, double keep, Form form) {
  using A = at::opmath_type<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const A inv_b = static_cast<A>(1.0 / static_cast<double>(B));
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < L1 * B; j += stride) {
    const int64_t l = j / B, b = j % B;
    A total = A(0), d_prev, d_cur;
    if (l >= 1) {  // r[l] is the numerator of constraint l-1
      descent_sample_grads<A>(static_cast<A>(grad[l - 1]), static_cast<A>(r[(l - 1) * B + b]),
                              static_cast<A>(r[j]), static_cast<A>(keep), form, inv_b,
                              static_cast<A>(means[l - 1]), static_cast<A>(means[l]), &d_prev, &d_cur);
      total += d_cur;
    }
    if (l + 1 < L1) {  // and the denominator of constraint l
      descent_sample_grads<A>(static_cast<A>(grad[l]), static_cast<A>(r[j]), static_cast<A>(r[(l + 1) * B + b]),
                              static_cast<A>(keep), form, inv_b, static_cast<A>(means[l]),
                              static_cast<A>(means[l + 1]), &d_prev, &d_cur);
      total += d_prev;
    }
    out[j] = static_cast<T>(total);
  }
}

at::Tensor row_means(const at::Tensor& r) {
  auto means = at::empty({r.size(0)}, r.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "row_means_cuda", [&] {
    row_means_kernel<scalar_t><<<r.size(0), kThreads, 0, stream>>>(r.const_data_ptr<scalar_t>(),
                                                                   means.mutable_data_ptr<double>(), r.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return means;
}

std::tuple<at::Tensor, at::Tensor> descent_violations_cuda(const at::Tensor& norms, double eps,
                                                           c10::string_view form_name) {
  Form form = check_violations(norms, eps, form_name);
  c10::cuda::CUDAGuard guard(norms.device());
  int64_t L1 = norms.size(0), B = norms.size(1), L = L1 - 1;
  auto r = norms.contiguous();
  auto values = at::empty({L}, r.options());
  auto per_sample = at::empty({L, B}, r.options());
  if (L == 0) return {values, per_sample};
  if (B == 0) return {values.fill_(std::numeric_limits<double>::quiet_NaN()), per_sample};
  auto means = row_means(r);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "descent_violations_cuda", [&] {
    violations_kernel<scalar_t><<<L, kThreads, 0, stream>>>(
        r.const_data_ptr<scalar_t>(), means.const_data_ptr<double>(), values.mutable_data_ptr<scalar_t>(),
        per_sample.mutable_data_ptr<scalar_t>(), B, 1.0 - eps, form);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values, per_sample};
}

at::Tensor descent_violations_backward_cuda(const at::Tensor& grad, const at::Tensor& norms, double eps,
                                            c10::string_view form_name) {
  Form form = check_violations_backward(grad, norms, eps, form_name);
  int64_t L1 = norms.size(0), B = norms.size(1), L = L1 - 1;
  c10::cuda::CUDAGuard guard(norms.device());
  auto r = norms.contiguous();
  auto out = at::empty_like(r);
  if (B == 0) return out;
  auto g = grad.to(r.scalar_type()).contiguous();
  auto means = row_means(r);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "descent_violations_backward_cuda", [&] {
    violations_backward_kernel<scalar_t><<<num_blocks(L1 * B), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), means.const_data_ptr<double>(),
        out.mutable_data_ptr<scalar_t>(), L1, B, 1.0 - eps, form);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> descent_constraints_cuda(
    const at::Tensor& iterates, const c10::optional<at::Tensor>& reference, double eps, c10::string_view form) {
  check_eps(eps);
  parse_form(form);
  auto norms = residual_norms_cuda(iterates, reference);
  auto [values, per_sample] = descent_violations_cuda(norms, eps, form);
  return {values, per_sample, norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CUDA, m) {
  m.impl("descent_violations", &descent_violations_cuda);
  m.impl("descent_violations_backward", &descent_violations_backward_cuda);
  m.impl("descent_constraints", &descent_constraints_cuda);
}

}  // namespace sdu::cuda
