// CUDA minimum-norm subgradient of g + alpha ||.||_1 and its backward in grad.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/math.h"
#include "utils.cuh"

namespace sdu::cuda {
namespace {

// out = value(grad, y) when grad_out is null, else grad_out masked by the
// subgradient's dependence on grad.
template <typename T, int VEC>
__global__ void subgradient_kernel(const T* __restrict__ grad, const T* __restrict__ y,
                                   const T* __restrict__ grad_out, T* __restrict__ out, int64_t n, double alpha_d) {
  using A = at::opmath_type<T>;
  const A alpha = static_cast<A>(alpha_d);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  auto one = [&](T g, T yv, T go) -> T {
    A ga = static_cast<A>(g), ya = static_cast<A>(yv);
    if (grad_out) return min_norm_subgradient_passes<A>(ga, ya, alpha) ? go : T(0);
    return static_cast<T>(min_norm_subgradient_value<A>(ga, ya, alpha));
  };
  const int64_t packs = n / VEC;
  for (int64_t p = start; p < packs; p += stride) {
    Pack<T, VEC> gv = reinterpret_cast<const Pack<T, VEC>*>(grad)[p];
    Pack<T, VEC> yv = reinterpret_cast<const Pack<T, VEC>*>(y)[p];
    Pack<T, VEC> gov, ov;
    if (grad_out) gov = reinterpret_cast<const Pack<T, VEC>*>(grad_out)[p];
#pragma unroll
    for (int k = 0; k < VEC; ++k) ov.v[k] = one(gv.v[k], yv.v[k], grad_out ? gov.v[k] : T(0));
    reinterpret_cast<Pack<T, VEC>*>(out)[p] = ov;
  }
  for (int64_t i = packs * VEC + start; i < n; i += stride) {
    out[i] = one(grad[i], y[i], grad_out ? grad_out[i] : T(0));
  }
}

at::Tensor launch(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& grad_out, double alpha) {
  c10::cuda::CUDAGuard guard(grad.device());
  auto g = grad.contiguous();
  auto yc = y.contiguous();
  auto go = grad_out.defined() ? grad_out.to(grad.scalar_type()).contiguous() : at::Tensor();
  auto out = at::empty_like(g, at::MemoryFormat::Contiguous);
  int64_t n = g.numel();
  if (n == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "min_norm_subgradient_cuda", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.defined() ? go.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    constexpr int V = 16 / sizeof(scalar_t);
    if (pack_width<scalar_t>({gp, yp, gop, op}) == V) {
      subgradient_kernel<scalar_t, V><<<num_blocks(n / V + 1), kThreads, 0, stream>>>(gp, yp, gop, op, n, alpha);
    } else {
      subgradient_kernel<scalar_t, 1><<<num_blocks(n), kThreads, 0, stream>>>(gp, yp, gop, op, n, alpha);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor min_norm_subgradient_cuda(const at::Tensor& grad, const at::Tensor& y, double alpha) {
  check_subgradient(grad, y, alpha);
  return launch(grad, y, at::Tensor(), alpha);
}

at::Tensor min_norm_subgradient_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad,
                                              const at::Tensor& y, double alpha) {
  check_subgradient_backward(grad_out, grad, y, alpha);
  return launch(grad, y, grad_out, alpha);
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CUDA, m) {
  m.impl("min_norm_subgradient", &min_norm_subgradient_cuda);
  m.impl("min_norm_subgradient_backward", &min_norm_subgradient_backward_cuda);
}

}  // namespace sdu::cuda
