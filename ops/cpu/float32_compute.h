// float16 and bfloat16 for CPU kernels written for float32/float64:
// `ComputeInFloat32<&kernel>::run` has the kernel's signature; when the first tensor argument is
// float16 or bfloat16 it runs the kernel on float32 copies of the float16/bfloat16 tensor arguments
// (so every sum accumulates in float32) and returns the floating outputs in that dtype; otherwise
// it calls the kernel as is.
//
// Register it in place of the kernel: m.impl("ps_roi_pool", &ComputeInFloat32<&forward>::run).
// The copies cost a pass over the inputs and outputs; roi_align and nms convert inside their
// kernels instead (cpu/roi_align_forward.cpp, cpu/roi_align_backward.cpp, cpu/nms_kernel.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace detector {

inline bool is_reduced_float(at::ScalarType type) {
  return type == at::kHalf || type == at::kBFloat16;
}

inline at::Tensor to_compute(const at::Tensor& t) {
  return t.defined() && is_reduced_float(t.scalar_type()) ? t.to(at::kFloat) : t;
}

inline std::optional<at::Tensor> to_compute(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(to_compute(*t)) : t;
}

template <typename T>
const T& to_compute(const T& value) {  // not a tensor: unchanged
  return value;
}

inline at::Tensor to_storage(const at::Tensor& t, at::ScalarType type) {
  return t.defined() && t.is_floating_point() ? t.to(type) : t;
}

template <typename... T>
std::tuple<T...> to_storage(const std::tuple<T...>& outputs, at::ScalarType type) {
  return std::apply([&](const auto&... t) { return std::tuple<T...>(to_storage(t, type)...); },
                    outputs);
}

inline void note_first_type(std::optional<at::ScalarType>& first, const at::Tensor& t) {
  if (!first && t.defined()) {
    first = t.scalar_type();
  }
}

template <typename T>
void note_first_type(std::optional<at::ScalarType>&, const T&) {}

template <auto Kernel>
struct ComputeInFloat32;

template <typename R, typename... Args, R (*Kernel)(Args...)>
struct ComputeInFloat32<Kernel> {
  static R run(Args... args) {
    std::optional<at::ScalarType> first;
    (note_first_type(first, args), ...);
    if (!first || !is_reduced_float(*first)) {
      return Kernel(args...);
    }
    return to_storage(Kernel(to_compute(args)...), *first);
  }
};

}  // namespace detector
