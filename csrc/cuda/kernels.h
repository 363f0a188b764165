// CUDA kernels that other CUDA kernels build on.
#pragma once

#include <ATen/ATen.h>

namespace sdu::cuda {

at::Tensor residual_norms_cuda(const at::Tensor& iterates, const c10::optional<at::Tensor>& reference);

}  // namespace sdu::cuda
