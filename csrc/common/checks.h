// Argument validation shared by the kernels of every backend. Messages name the
// argument, what was expected and what was received (tests match them).
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>

#include <cstdio>
#include <string>

#include "math.h"

namespace sdu {

// Error messages are assembled here as one std::string and handed to TORCH_CHECK
// whole, so no number passes through an iostream compiled into this library: on a
// CUDA machine image with torch 2.11 (H200, 2026-11-29) every check whose message
// streamed a number (c10::str or std::ostringstream here) segfaulted, while messages
// of strings alone raised normally. std::to_string and snprintf avoid the streams.
namespace detail {
inline void put(std::string& s, const char* v) { s += v; }
inline void put(std::string& s, const std::string& v) { s += v; }
inline void put(std::string& s, c10::string_view v) { s.append(v.data(), v.size()); }
inline void put(std::string& s, int64_t v) { s += std::to_string(v); }
inline void put(std::string& s, int v) { s += std::to_string(v); }
inline void put(std::string& s, double v) {
  char buf[32];  // %g is what an ostream prints by default (precision 6)
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
inline void put(std::string& s, const c10::Device& v) { s += v.str(); }
}  // namespace detail

template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (detail::put(s, args), ...);
  return s;
}

inline std::string shape_str(at::IntArrayRef s) {
  std::string o = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) o += ", ";
    o += std::to_string(s[i]);
  }
  if (s.size() == 1) o += ",";
  return o + ")";
}

// The dtype as Python spells it (torch.float32), so C++ and fake-kernel messages agree.
inline std::string dtype_str(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(st);
  }
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), msg(name, ": expected a tensor, got None"));
  auto st = t.scalar_type();
  TORCH_CHECK(
      st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, msg(name,
      ": expected dtype float32, float64, float16 or bfloat16, got ", dtype_str(st)));
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), msg(name, ": expected dtype ",
              dtype_str(ref.scalar_type()), " (same as ", ref_name, "), got ",
              dtype_str(t.scalar_type())));
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), msg(name, ": expected device ", ref.device(),
              " (same as ", ref_name, "), got ", t.device()));
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* what) {
  TORCH_CHECK(t.dim() == dim, msg(name, ": expected a ", dim, "-D tensor ", what, ", got shape ",
              shape_str(t.sizes())));
}

// How theta broadcasts against x: one value, one value per entry of the last
// dimension, or anything else (materialised elementwise).
enum class ThetaMode { Scalar, Row, Full };

inline ThetaMode check_theta(const at::Tensor& x, const at::Tensor& theta, const char* x_name = "x") {
  check_floating(theta, "theta");
  check_same_device(theta, "theta", x, x_name);
  bool ok = theta.dim() <= x.dim();
  for (int64_t i = 1; ok && i <= theta.dim(); ++i) {
    int64_t t = theta.size(-i), s = x.size(-i);
    ok = t == 1 || t == s;
  }
  TORCH_CHECK(ok, msg("theta: expected shape broadcastable to ", x_name, " ", shape_str(x.sizes()), ", got ",
              shape_str(theta.sizes())));
  if (theta.numel() == 1) return ThetaMode::Scalar;
  int64_t d = x.dim() ? x.size(-1) : 1;
  if (theta.numel() == d && theta.size(-1) == d) return ThetaMode::Row;
  return ThetaMode::Full;
}

// theta in x's accumulation dtype, laid out as the kernels read it:
// 1 value (Scalar), last-dimension vector (Row) or x's full shape (Full).
inline at::Tensor theta_for_kernel(const at::Tensor& x, const at::Tensor& theta, ThetaMode mode) {
  auto acc = at::toOpMathType(x.scalar_type());
  if (mode == ThetaMode::Scalar) return theta.reshape({1}).to(acc).contiguous();
  if (mode == ThetaMode::Row) return theta.reshape({x.size(-1)}).to(acc).contiguous();
  return theta.to(acc).expand(x.sizes()).contiguous();
}

// Reduce the elementwise theta gradient (already reduced to a vector for Row
// mode, a single value for Scalar mode) to theta's shape, dtype and strides
// (those of empty_like(theta), which the fake kernel announces).
inline at::Tensor theta_grad_to_shape(const at::Tensor& g, const at::Tensor& theta, ThetaMode mode) {
  auto reduced = mode == ThetaMode::Full ? at::sum_to(g, theta.sizes()) : g.reshape(theta.sizes());
  auto out = at::empty_like(theta);
  out.copy_(reduced);
  return out;
}

inline Form parse_form(c10::string_view form) {
  if (form == "mean_ratio") return Form::MeanRatio;
  if (form == "ratio_of_means") return Form::RatioOfMeans;
  if (form == "difference") return Form::Difference;
  TORCH_CHECK_VALUE(false, msg("form: expected one of 'mean_ratio', 'ratio_of_means', 'difference', got '",
                    std::string(form), "'"));
}

inline void check_eps(double eps) {
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < 1.0, msg("eps: expected a value in [0, 1), got ", eps));
}

inline void check_iterates(const at::Tensor& iterates, const c10::optional<at::Tensor>& reference) {
  check_floating(iterates, "iterates");
  check_dim(iterates, "iterates", 3, "(L+1, B, m)");
  TORCH_CHECK(iterates.size(0) >= 1, msg("iterates: expected at least one layer (L+1 >= 1), got shape ",
              shape_str(iterates.sizes())));
  if (reference.has_value() && reference->defined()) {
    const auto& r = *reference;
    check_floating(r, "reference");
    check_same_dtype(r, "reference", iterates, "iterates");
    check_same_device(r, "reference", iterates, "iterates");
    TORCH_CHECK(r.dim() == 2 && r.size(0) == iterates.size(1) && r.size(1) == iterates.size(2),
                msg("reference: expected shape (", iterates.size(1), ", ", iterates.size(2),
                ") = (B, m) of iterates, got ", shape_str(r.sizes())));
  }
}

inline void check_norms(const at::Tensor& norms) {
  check_floating(norms, "norms");
  check_dim(norms, "norms", 2, "(L+1, B)");
  TORCH_CHECK(norms.size(0) >= 1, msg("norms: expected at least one layer (L+1 >= 1), got shape ",
              shape_str(norms.sizes())));
}

// Argument checks of the backward helpers and of min_norm_subgradient, shared by
// both backends.
inline ThetaMode check_soft_threshold_backward(const at::Tensor& grad, const at::Tensor& y,
                                               const at::Tensor& theta) {
  check_floating(y, "y");
  check_floating(grad, "grad");
  check_same_device(grad, "grad", y, "y");
  TORCH_CHECK(grad.sizes() == y.sizes(), msg("grad: expected shape ", shape_str(y.sizes()),
              " (same as y), got ", shape_str(grad.sizes())));
  return check_theta(y, theta, "y");
}

inline void check_residual_norms_backward(const at::Tensor& grad, const at::Tensor& iterates,
                                          const c10::optional<at::Tensor>& reference,
                                          const at::Tensor& norms) {
  check_iterates(iterates, reference);
  int64_t L1 = iterates.size(0), B = iterates.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == L1 && grad.size(1) == B, msg("grad: expected shape (",
              L1, ", ", B, ") = (L+1, B), got ", shape_str(grad.sizes())));
  TORCH_CHECK(norms.sizes() == grad.sizes(), msg("norms: expected shape ", shape_str(grad.sizes()),
              ", got ", shape_str(norms.sizes())));
}

inline Form check_violations(const at::Tensor& norms, double eps, c10::string_view form) {
  check_norms(norms);
  check_eps(eps);
  return parse_form(form);
}

inline Form check_violations_backward(const at::Tensor& grad, const at::Tensor& norms, double eps,
                                      c10::string_view form) {
  Form f = check_violations(norms, eps, form);
  int64_t L = norms.size(0) - 1;
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == L, msg("grad: expected shape (", L, ",) = (L,), got ",
              shape_str(grad.sizes())));
  return f;
}

inline void check_subgradient(const at::Tensor& grad, const at::Tensor& y, double alpha) {
  check_floating(grad, "grad");
  check_floating(y, "y");
  check_same_dtype(y, "y", grad, "grad");
  check_same_device(y, "y", grad, "grad");
  TORCH_CHECK(y.sizes() == grad.sizes(), msg("y: expected shape ", shape_str(grad.sizes()),
              " (same as grad), got ", shape_str(y.sizes())));
  TORCH_CHECK_VALUE(alpha >= 0, msg("alpha: expected a non-negative value, got ", alpha));
}

inline void check_subgradient_backward(const at::Tensor& grad_out, const at::Tensor& grad,
                                       const at::Tensor& y, double alpha) {
  check_subgradient(grad, y, alpha);
  check_same_device(grad_out, "grad_out", grad, "grad");
  TORCH_CHECK(grad_out.sizes() == grad.sizes(), msg("grad_out: expected shape ", shape_str(grad.sizes()),
              " (same as grad), got ", shape_str(grad_out.sizes())));
}

// soft_threshold_ overwrites x while it reads theta (and x): like PyTorch's own in-place
// ops it refuses memory that overlaps, which would make the result depend on the order
// in which elements are written. Strided views whose overlap ATen cannot decide count
// as overlapping when their memory ranges intersect.
inline void check_inplace_overlap(const at::Tensor& x, const at::Tensor& theta) {
  TORCH_CHECK(at::has_internal_overlap(x) != at::MemOverlap::Yes,
              "x: expected a tensor whose elements occupy distinct memory (soft_threshold_ writes "
              "every element), got one with internal overlap (e.g. an expanded view); pass x.clone()");
  auto status = at::get_overlap_status(x, theta);
  bool overlap = status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
  if (status == at::MemOverlapStatus::TooHard && x.numel() > 0 && theta.numel() > 0 &&
      x.storage().is_alias_of(theta.storage())) {
    auto range = [](const at::Tensor& t) {
      int64_t lo = t.storage_offset(), hi = lo;
      for (int64_t d = 0; d < t.dim(); ++d) {
        int64_t span = (t.size(d) - 1) * t.stride(d);
        (span < 0 ? lo : hi) += span;
      }
      return std::make_pair(lo * static_cast<int64_t>(t.element_size()),
                            (hi + 1) * static_cast<int64_t>(t.element_size()));
    };
    auto a = range(x), b = range(theta);
    overlap = a.first < b.second && b.first < a.second;
  }
  TORCH_CHECK(!overlap, "theta: expected memory separate from x (soft_threshold_ overwrites x "
              "while it reads theta), got a tensor that overlaps x in memory; pass theta.clone()");
}

inline bool has_reference(const c10::optional<at::Tensor>& reference) {
  return reference.has_value() && reference->defined();
}

}  // namespace sdu
