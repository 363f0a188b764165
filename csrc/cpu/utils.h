// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

// Hot loops are compiled for several x86 instruction sets and the best one the
// running CPU supports is picked at load time (GCC/Clang function multi-
// versioning), so one portable build still gets AVX2/AVX-512 vector loops.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define SDU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SDU_MULTIVERSION
#endif

namespace sdu::cpu {

// Elements per parallel task: large enough to amortise scheduling, small enough
// to split 16M elements over many cores.
constexpr int64_t kGrain = 32768;

inline bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// float16/bfloat16 are a storage format on the CPU: the kernels run in float on
// a float copy, and results are rounded back once.
inline at::Tensor as_acc(const at::Tensor& t) {
  return is_reduced(t) ? t.to(at::kFloat) : t;
}

// A fresh contiguous output. Large outputs ask the kernel for transparent huge
// pages before their first touch: a fresh 64 MB buffer otherwise costs ~16k page
// faults, which take longer than the kernel itself on a memory-bound op. This is
// what THP_MEM_ALLOC_ENABLE=1 does for all of torch, limited to our outputs.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = 2u << 20;
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(out.data_ptr());
  const std::uintptr_t end = begin + out.nbytes();
  const std::uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t last = end & ~(kHuge - 1);
  if (out.nbytes() >= 4 * kHuge && last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advisory only
  }
#endif
  return out;
}

inline at::Tensor new_output_like(const at::Tensor& t) {
  return new_output(t.sizes(), t.options());
}

}  // namespace sdu::cpu
