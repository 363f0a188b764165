// Helpers for the CPU kernels: vectorised loops over float/double, with
// float16/bfloat16 inputs routed through a float copy (CPU half precision is a
// storage format here; the arithmetic is done in float either way).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

namespace sdu::cpu {

// Elements per parallel task: large enough to amortise scheduling, small enough
// to split 16M elements over many cores.
constexpr int64_t kGrain = 32768;

inline bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

inline at::Tensor as_acc(const at::Tensor& t) {
  return is_reduced(t) ? t.to(at::kFloat) : t;
}

}  // namespace sdu::cpu
