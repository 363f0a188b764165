// CUDA residual norms of stacked iterates: one warp per (layer, sample) row with
// packed loads and a shuffle reduction; the backward is one pass in which each
// thread owns one (sample, coordinate) and walks the layers, so the reference
// gradient needs no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "kernels.h"
#include "utils.cuh"

namespace sdu::cuda {
namespace {

template <typename T, int VEC>
__global__ void norms_kernel(const T* __restrict__ it, const T* __restrict__ ref, T* __restrict__ out,
                             int64_t rows, int64_t B, int64_t m) {
  using A = at::opmath_type<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_grid = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
       row += warps_per_grid) {
    const T* a = it + row * m;
    const T* r = ref ? ref + (row % B) * m : nullptr;
    A acc = A(0);
    const int64_t packs = m / VEC;
    for (int64_t p = lane; p < packs; p += 32) {
      Pack<T, VEC> av = reinterpret_cast<const Pack<T, VEC>*>(a)[p];
      Pack<T, VEC> rv;
      if (r) rv = reinterpret_cast<const Pack<T, VEC>*>(r)[p];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        A dv = static_cast<A>(av.v[k]) - (r ? static_cast<A>(rv.v[k]) : A(0));
        acc += dv * dv;
      }
    }
    for (int64_t i = packs * VEC + lane; i < m; i += 32) {
      A dv = static_cast<A>(a[i]) - (r ? static_cast<A>(r[i]) : A(0));
      acc += dv * dv;
    }
    acc = warp_sum(acc);
    if (lane == 0) out[row] = static_cast<T>(::sqrt(acc));
  }
}

template <typename T>
__global__ void norms_backward_kernel(const T* __restrict__ it, const T* __restrict__ ref,
                                      const at::opmath_type<T>* __restrict__ scale, T* __restrict__ g_it,
                                      T* __restrict__ g_ref, int64_t L1, int64_t B, int64_t m) {
  using A = at::opmath_type<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < B * m; j += stride) {
    const int64_t b = j / m;
    const A rv = ref ? static_cast<A>(ref[j]) : A(0);
    A ref_acc = A(0);
    for (int64_t l = 0; l < L1; ++l) {
      const int64_t k = l * B * m + j;
      A v = (static_cast<A>(it[k]) - rv) * scale[l * B + b];
      g_it[k] = static_cast<T>(v);
      if (g_ref) ref_acc -= v;
    }
    if (g_ref) g_ref[j] = static_cast<T>(ref_acc);
  }
}

}  // namespace

at::Tensor residual_norms_cuda(const at::Tensor& iterates, const c10::optional<at::Tensor>& reference) {
  check_iterates(iterates, reference);
  c10::cuda::CUDAGuard guard(iterates.device());
  int64_t L1 = iterates.size(0), B = iterates.size(1), m = iterates.size(2);
  auto it = iterates.contiguous();
  bool has_ref = has_reference(reference);
  at::Tensor ref = has_ref ? reference->contiguous() : at::Tensor();
  auto out = at::empty({L1, B}, it.options());
  if (out.numel() == 0) return out;
  if (m == 0) return out.zero_();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, it.scalar_type(), "residual_norms_cuda", [&] {
    const scalar_t* ip = it.const_data_ptr<scalar_t>();
    const scalar_t* rp = has_ref ? ref.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    constexpr int V = 16 / sizeof(scalar_t);
    int64_t rows = L1 * B;
    int blocks = num_blocks(rows * 32);
    // Rows start at multiples of m: packs stay aligned only when m is a multiple of V.
    if (m % V == 0 && pack_width<scalar_t>({ip, rp}) == V) {
      norms_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(ip, rp, op, rows, B, m);
    } else {
      norms_kernel<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(ip, rp, op, rows, B, m);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

namespace {

// As residual_norms_backward_cpu: with reference_grad false (or no reference)
// the reference gradient is neither computed nor written, and an empty (0,)
// tensor takes its place.
std::tuple<at::Tensor, at::Tensor> residual_norms_backward_cuda(
    const at::Tensor& grad, const at::Tensor& iterates, const c10::optional<at::Tensor>& reference,
    const at::Tensor& norms, bool reference_grad) {
  check_residual_norms_backward(grad, iterates, reference, norms);
  int64_t L1 = iterates.size(0), B = iterates.size(1), m = iterates.size(2);
  c10::cuda::CUDAGuard guard(iterates.device());
  bool has_ref = has_reference(reference);
  bool want_ref = has_ref && reference_grad;
  auto it = iterates.contiguous();
  auto g_it = at::empty_like(it, at::MemoryFormat::Contiguous);
  at::Tensor ref = has_ref ? reference->contiguous() : at::Tensor();
  at::Tensor g_ref = want_ref ? at::empty_like(ref, at::MemoryFormat::Contiguous) : at::empty({0}, it.options());
  if (B * m == 0) {
    if (want_ref) g_ref.zero_();
    return {g_it, g_ref};
  }
  auto acc_type = at::toOpMathType(it.scalar_type());
  auto scale = (grad.to(acc_type) / norms.to(acc_type)).masked_fill(norms == 0, 0).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, it.scalar_type(), "residual_norms_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    norms_backward_kernel<scalar_t><<<num_blocks(B * m), kThreads, 0, stream>>>(
        it.const_data_ptr<scalar_t>(), has_ref ? ref.const_data_ptr<scalar_t>() : nullptr,
        scale.const_data_ptr<A>(), g_it.mutable_data_ptr<scalar_t>(),
        want_ref ? g_ref.mutable_data_ptr<scalar_t>() : nullptr, L1, B, m);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {g_it, g_ref};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CUDA, m) {
  m.impl("residual_norms", &residual_norms_cuda);
  m.impl("residual_norms_backward", &residual_norms_backward_cuda);
}

}  // namespace sdu::cuda
