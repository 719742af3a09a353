// Scalar helpers shared by every ISA translation unit (included inside each ISA's namespace, so
// every copy is private to its translation unit).
//
// No std:: templates here or in kernels_impl.h: their instantiations are shared between
// translation units (weak symbols), so one compiled for AVX-512 could end up called from the
// baseline path.

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline void zero_floats(float* p, int64_t n) { std::memset(p, 0, n * sizeof(float)); }

struct bf16 {
  uint16_t b;
};
struct f16 {
  uint16_t b;
};

static inline float to_f(float v) { return v; }
static inline float to_f(bf16 v) {
  uint32_t u = uint32_t(v.b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline float to_f(f16 v) {
  const uint32_t h = v.b;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
