// CPU kernels for any CPU: one float per "vector" (the compiler may still vectorise the plain
// loops with the baseline instruction set).
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace sparsekit::cpu {
namespace isa_base {

#include "simd_types.h"

struct ISA {
  static constexpr const char* name = "base";
  static constexpr int W = 1;
  using vec = float;
  static vec zero() { return 0.f; }
  static vec set1(float f) { return f; }
  static vec loadf(const float* p) { return *p; }
  static void storef(float* p, vec v) { *p = v; }
  template <class WT>
  static vec load(const WT* p) { return to_f(*p); }
  static vec fma(vec a, vec b, vec c) { return a * b + c; }
  template <class WT>
  static vec expand(uint32_t m, const WT* v, const WT*) { return m ? to_f(*v) : 0.f; }
};

#include "kernels_impl.h"

}  // namespace isa_base

const Kernels& kernels_base() { return isa_base::kTable; }

}  // namespace sparsekit::cpu
