// Shared pieces of the CUDA kernels: packed (vectorised) loads, block reductions,
// launch sizes. Every kernel runs on the current stream of its input's device.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace sdu::cuda {

constexpr int kThreads = 256;

// N consecutive elements moved as one aligned load/store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte load when every pointer is 16-byte aligned, else 1.
template <typename T>
inline int pack_width(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return 1;
  }
  return static_cast<int>(16 / sizeof(T));
}

// Enough blocks to fill the device, no more (the kernels loop grid-stride).
inline int num_blocks(int64_t work, int threads = kThreads) {
  int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t want = (work + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, sms * 8)));
}

template <typename A>
__device__ inline A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a
// multiple of 32 and at most 1024.
template <typename A>
__device__ inline A block_sum(A v) {
  __shared__ A warp_totals[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? warp_totals[threadIdx.x] : A(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();  // warp_totals may be reused by the next call
  return v;
}

}  // namespace sdu::cuda
