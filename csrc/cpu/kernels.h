// CPU kernels that other CPU kernels build on.
#pragma once

#include <ATen/ATen.h>

namespace sdu::cpu {

at::Tensor residual_norms_cpu(const at::Tensor& iterates, const c10::optional<at::Tensor>& reference);
std::tuple<at::Tensor, at::Tensor> descent_violations_cpu(const at::Tensor& norms, double eps,
                                                          c10::string_view form);

}  // namespace sdu::cpu
