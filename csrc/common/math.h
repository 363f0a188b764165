// Elementwise and small-reduction formulas shared by the CPU and CUDA kernels,
// so both backends compute exactly the same thing.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace sdu {

// Denominators of the ratio constraint forms are floored at this value (in the
// accumulation type) so a residual that is exactly zero cannot produce inf/NaN.
constexpr double kRatioFloor = 1e-12;

enum class Form : int { MeanRatio = 0, RatioOfMeans = 1, Difference = 2 };

// y = sign(x) * max(|x| - t, 0). Written as abs/copysign and selects so CPU loops
// auto-vectorise; NaN in x propagates (the clamp keeps NaN); x == 0 maps to 0 for
// any t (including the negative thresholds the research initialisation can produce).
template <typename T>
C10_HOST_DEVICE inline T soft_threshold_value(T x, T t) {
  T a = std::abs(x) - t;
  T m = a < T(0) ? T(0) : a;
  T y = std::copysign(m, x);
  return x == T(0) ? T(0) : y;
}

// d y / d t = -sign(y): the backward needs only the output.
template <typename T>
C10_HOST_DEVICE inline T soft_threshold_dtheta(T g, T y) {
  return y > T(0) ? -g : (y < T(0) ? g : T(0));
}

// Minimum-norm element of grad_i + alpha * d|y_i|: grad_i + alpha sign(y_i) off
// zero, shrink(grad_i, alpha) at zero; NaN in y propagates. Branch-free (see above).
template <typename T>
C10_HOST_DEVICE inline T min_norm_subgradient_value(T g, T y, T alpha) {
  T off = g + std::copysign(alpha, y);
  T a = std::abs(g) - alpha;
  T at_zero = std::copysign(a < T(0) ? T(0) : a, g);
  T v = y == T(0) ? at_zero : off;
  return y != y ? y : v;
}

// d value / d grad: 1 off the dead zone, 0 inside it.
template <typename T>
C10_HOST_DEVICE inline bool min_norm_subgradient_passes(T g, T y, T alpha) {
  return y != T(0) || g > alpha || g < -alpha;
}

// max(v, floor) that lets NaN through instead of hiding it behind the floor.
template <typename T>
C10_HOST_DEVICE inline T floored(T v) {
  return v < T(kRatioFloor) ? T(kRatioFloor) : v;
}

// Per-sample constraint value for layer l from r_prev = r_{l-1}, r_cur = r_l.
template <typename T>
C10_HOST_DEVICE inline T descent_per_sample(T r_prev, T r_cur, T keep, Form form) {
  if (form == Form::Difference) return r_cur - keep * r_prev;
  return r_cur / floored(r_prev) - keep;
}

// Gradient of one constraint value with respect to one sample's residuals.
// inv_b = 1 / B; mean_prev and mean_cur are only read by RatioOfMeans. The ratio's
// derivative is formed as (r / den) / den: den * den would overflow (or underflow)
// long before the result does (float32 norms above ~1.8e19).
template <typename T>
C10_HOST_DEVICE inline void descent_sample_grads(
    T g, T r_prev, T r_cur, T keep, Form form, T inv_b, T mean_prev, T mean_cur,
    T* d_prev, T* d_cur) {
  if (form == Form::Difference) {
    *d_cur = g * inv_b;
    *d_prev = -keep * g * inv_b;
  } else if (form == Form::MeanRatio) {
    T den = floored(r_prev);
    *d_cur = g * inv_b / den;
    *d_prev = r_prev < T(kRatioFloor) ? T(0) : -(g * inv_b) * ((r_cur / den) / den);
  } else {
    T den = floored(mean_prev);
    *d_cur = g * inv_b / den;
    *d_prev = mean_prev < T(kRatioFloor) ? T(0) : -(g * inv_b) * ((mean_cur / den) / den);
  }
}

}  // namespace sdu
