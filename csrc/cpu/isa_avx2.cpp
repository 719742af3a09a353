// CPU kernels for AVX2 + FMA + F16C (8 floats per vector). Everything after the pragma is
// compiled for that target; the dispatcher (ops_cpu.cpp) calls it only where the CPU has it.
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)  // other CPUs use isa_base only
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace sparsekit::cpu {
namespace isa_avx2 {

#include "simd_types.h"

// perm[m][i]: for lane i set in mask m, how many lanes of m are set below i (the value it takes).
struct ExpandLut {
  alignas(32) int32_t perm[256][8] = {};
  constexpr ExpandLut() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int i = 0; i < 8; ++i) perm[m][i] = (m >> i) & 1 ? k++ : 0;
    }
  }
};
static constexpr ExpandLut kLut{};  // built by the compiler: no code runs at load time

struct ISA {
  static constexpr const char* name = "avx2";
  static constexpr int W = 8;
  using vec = __m256;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float f) { return _mm256_set1_ps(f); }
  static vec loadf(const float* p) { return _mm256_loadu_ps(p); }
  static void storef(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static vec load(const bf16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static vec load(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  template <class WT>
  static vec expand(uint32_t m, const WT* v, const WT* vend) {
    vec raw;
    if (v + 8 <= vend) {
      raw = load(v);
    } else {  // the last values of the buffer: do not read past its end
      alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int i = 0; i < 8 && v + i < vend; ++i) tmp[i] = to_f(v[i]);
      raw = _mm256_load_ps(tmp);
    }
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLut.perm[m]));
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(m)), bits), bits);
    return _mm256_and_ps(_mm256_permutevar8x32_ps(raw, perm), _mm256_castsi256_ps(on));
  }
};

#include "kernels_impl.h"

}  // namespace isa_avx2

const Kernels& kernels_avx2() { return isa_avx2::kTable; }

}  // namespace sparsekit::cpu
#pragma GCC pop_options
#endif
