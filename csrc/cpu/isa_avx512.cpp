// CPU kernels for AVX-512 (F, BW, VL) (16 floats per vector). The spdp expansion uses
// vexpandps: the non-zeros of a 16-row chunk land in the lanes its bitmap marks.
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)  // other CPUs use isa_base only
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // false positives inside GCC's own intrinsics
#include <immintrin.h>

namespace sparsekit::cpu {
namespace isa_avx512 {

#include "simd_types.h"

struct ISA {
  static constexpr const char* name = "avx512";
  static constexpr int W = 16;
  using vec = __m512;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec set1(float f) { return _mm512_set1_ps(f); }
  static vec loadf(const float* p) { return _mm512_loadu_ps(p); }
  static void storef(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static vec widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static vec load(const bf16* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static vec load(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  // Masked loads read only the popcount(m) values that exist (no access past the buffer's end).
  static vec expand(uint32_t m, const float* v, const float*) { return _mm512_maskz_expandloadu_ps(__mmask16(m), v); }
  static __mmask16 first_n(uint32_t m) {
    const int n = __builtin_popcount(m);
    return __mmask16(n >= 16 ? 0xffffu : (1u << n) - 1u);
  }
  static vec expand(uint32_t m, const bf16* v, const bf16*) {
    return _mm512_maskz_expand_ps(__mmask16(m), widen_bf16(_mm256_maskz_loadu_epi16(first_n(m), v)));
  }
  static vec expand(uint32_t m, const f16* v, const f16*) {
    return _mm512_maskz_expand_ps(__mmask16(m), _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_n(m), v)));
  }
};

#include "kernels_impl.h"

}  // namespace isa_avx512

const Kernels& kernels_avx512() { return isa_avx512::kTable; }

}  // namespace sparsekit::cpu
#pragma GCC pop_options
#endif
