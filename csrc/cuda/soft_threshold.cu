// CUDA soft-thresholding: forward, in place, and the fused backward that writes
// grad_x and reduces grad_theta in the same pass over (grad, y).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/math.h"
#include "utils.cuh"

namespace sdu::cuda {
namespace {

template <typename A>
__device__ inline A theta_at(const A* th, ThetaMode mode, int64_t i, int64_t d) {
  return mode == ThetaMode::Scalar ? th[0] : (mode == ThetaMode::Row ? th[i % d] : th[i]);
}

template <typename T, int VEC>
__global__ void forward_kernel(const T* __restrict__ x, const at::opmath_type<T>* __restrict__ th,
                               T* y, int64_t n, int64_t d, ThetaMode mode) {
  using A = at::opmath_type<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  for (int64_t p = start; p < packs; p += stride) {
    Pack<T, VEC> in = reinterpret_cast<const Pack<T, VEC>*>(x)[p], out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      int64_t i = p * VEC + k;
      out.v[k] = static_cast<T>(soft_threshold_value<A>(static_cast<A>(in.v[k]), theta_at(th, mode, i, d)));
    }
    reinterpret_cast<Pack<T, VEC>*>(y)[p] = out;
  }
  for (int64_t i = packs * VEC + start; i < n; i += stride) {
    y[i] = static_cast<T>(soft_threshold_value<A>(static_cast<A>(x[i]), theta_at(th, mode, i, d)));
  }
}

void forward_into(const at::Tensor& xc, const at::Tensor& theta, ThetaMode mode, at::Tensor& out) {
  auto th = theta_for_kernel(xc, theta, mode);
  int64_t n = xc.numel();
  int64_t d = xc.dim() ? xc.size(-1) : 1;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "soft_threshold_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    const A* tp = th.const_data_ptr<A>();
    constexpr int V = 16 / sizeof(scalar_t);
    if (pack_width<scalar_t>({xp, yp}) == V) {
      forward_kernel<scalar_t, V><<<num_blocks(n / V + 1), kThreads, 0, stream>>>(xp, tp, yp, n, d, mode);
    } else {
      forward_kernel<scalar_t, 1><<<num_blocks(n), kThreads, 0, stream>>>(xp, tp, yp, n, d, mode);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor soft_threshold_cuda(const at::Tensor& x, const at::Tensor& theta) {
  check_floating(x, "x");
  auto mode = check_theta(x, theta);
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  if (x.numel() > 0) forward_into(xc, theta, mode, out);
  return out;
}

void soft_threshold_inplace_cuda(at::Tensor& x, const at::Tensor& theta) {
  check_floating(x, "x");
  auto mode = check_theta(x, theta);
  check_inplace_overlap(x, theta);
  c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return;
  if (x.is_contiguous()) {
    forward_into(x, theta, mode, x);
  } else {
    x.copy_(soft_threshold_cuda(x, theta));
  }
}

// Flat layout (Scalar and Full theta): grad_x elementwise; the theta gradient is
// written per element (Full) or reduced to one partial sum per block (Scalar).
template <typename T, int VEC>
__global__ void backward_flat_kernel(const T* __restrict__ g, const T* __restrict__ y,
                                     T* __restrict__ gx, at::opmath_type<T>* __restrict__ gth_elem,
                                     at::opmath_type<T>* __restrict__ block_partials, int64_t n) {
  using A = at::opmath_type<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / VEC;
  A acc = A(0);
  for (int64_t p = start; p < packs; p += stride) {
    Pack<T, VEC> gv = reinterpret_cast<const Pack<T, VEC>*>(g)[p];
    Pack<T, VEC> yv = reinterpret_cast<const Pack<T, VEC>*>(y)[p];
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      A gk = static_cast<A>(gv.v[k]), yk = static_cast<A>(yv.v[k]);
      out.v[k] = yk != A(0) ? gv.v[k] : T(0);
      A dt = soft_threshold_dtheta<A>(gk, yk);
      if (gth_elem) gth_elem[p * VEC + k] = dt; else acc += dt;
    }
    reinterpret_cast<Pack<T, VEC>*>(gx)[p] = out;
  }
  for (int64_t i = packs * VEC + start; i < n; i += stride) {
    A gk = static_cast<A>(g[i]), yk = static_cast<A>(y[i]);
    gx[i] = yk != A(0) ? g[i] : T(0);
    A dt = soft_threshold_dtheta<A>(gk, yk);
    if (gth_elem) gth_elem[i] = dt; else acc += dt;
  }
  if (block_partials) {
    acc = block_sum(acc);
    if (threadIdx.x == 0) block_partials[blockIdx.x] = acc;
  }
}

// Row layout (theta per last-dimension entry): a 32 x 8 block covers 32 columns;
// each thread walks rows, warps read consecutive columns (coalesced), and the
// block writes one partial column sum per row chunk.
template <typename T>
__global__ void backward_row_kernel(const T* __restrict__ g, const T* __restrict__ y,
                                    T* __restrict__ gx, at::opmath_type<T>* __restrict__ partials,
                                    int64_t rows, int64_t d) {
  using A = at::opmath_type<T>;
  __shared__ A tile[8][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  A acc = A(0);
  if (col < d) {
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * 8 + threadIdx.y; r < rows;
         r += static_cast<int64_t>(gridDim.y) * 8) {
      int64_t i = r * d + col;
      A gk = static_cast<A>(g[i]), yk = static_cast<A>(y[i]);
      gx[i] = yk != A(0) ? g[i] : T(0);
      acc += soft_threshold_dtheta<A>(gk, yk);
    }
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    A s = A(0);
#pragma unroll
    for (int k = 0; k < 8; ++k) s += tile[k][threadIdx.x];
    partials[blockIdx.y * d + col] = s;
  }
}

std::tuple<at::Tensor, at::Tensor> soft_threshold_backward_cuda(const at::Tensor& grad, const at::Tensor& y,
                                                                const at::Tensor& theta) {
  auto mode = check_soft_threshold_backward(grad, y, theta);
  c10::cuda::CUDAGuard guard(y.device());
  if (y.numel() == 0) return {at::zeros_like(y, at::MemoryFormat::Contiguous), at::zeros_like(theta)};
  auto yc = y.contiguous();
  auto gc = grad.to(y.scalar_type()).contiguous();
  auto gx = at::empty_like(yc, at::MemoryFormat::Contiguous);
  auto acc_type = at::toOpMathType(y.scalar_type());
  int64_t n = yc.numel();
  int64_t d = yc.dim() ? yc.size(-1) : 1;
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor gth;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "soft_threshold_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    if (mode == ThetaMode::Row) {
      int64_t rows = n / d;
      int64_t col_blocks = (d + 31) / 32;
      int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
      int64_t row_blocks = std::max<int64_t>(1, std::min<int64_t>((rows + 7) / 8, sms * 16 / col_blocks + 1));
      row_blocks = std::min<int64_t>(row_blocks, 65535);
      auto partials = at::empty({row_blocks, d}, yc.options().dtype(acc_type));
      dim3 block(32, 8), grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks));
      backward_row_kernel<scalar_t><<<grid, block, 0, stream>>>(gp, yp, gxp, partials.mutable_data_ptr<A>(), rows, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gth = partials.sum(0);
      return;
    }
    constexpr int V = 16 / sizeof(scalar_t);
    bool packed = pack_width<scalar_t>({gp, yp, gxp}) == V;
    int blocks = packed ? num_blocks(n / V + 1) : num_blocks(n);
    A* elem = nullptr;
    A* partial_ptr = nullptr;
    at::Tensor partials;
    if (mode == ThetaMode::Full) {
      gth = at::empty_like(yc, yc.options().dtype(acc_type));
      elem = gth.mutable_data_ptr<A>();
    } else {
      partials = at::empty({blocks}, yc.options().dtype(acc_type));
      partial_ptr = partials.mutable_data_ptr<A>();
    }
    if (packed) {
      backward_flat_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(gp, yp, gxp, elem, partial_ptr, n);
    } else {
      backward_flat_kernel<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(gp, yp, gxp, elem, partial_ptr, n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (mode == ThetaMode::Scalar) gth = partials.sum(0, false, at::kDouble);
  });
  return {gx, theta_grad_to_shape(gth, theta, mode)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdu, CUDA, m) {
  m.impl("soft_threshold", &soft_threshold_cuda);
  m.impl("soft_threshold_", &soft_threshold_inplace_cuda);
  m.impl("soft_threshold_backward", &soft_threshold_backward_cuda);
}

}  // namespace sdu::cuda
