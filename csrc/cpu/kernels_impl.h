// The CPU kernels, written once against a small SIMD "ISA" traits class and compiled once per
// instruction set (isa_base.cpp, isa_avx2.cpp, isa_avx512.cpp include this file inside their own
// namespace after choosing the target). No torch headers: see kernels.h.
//
// An ISA class provides: W (floats per vector), vec, zero(), set1(f), loadf/storef (float acc),
// load(const WT*) for WT in {float, bf16, f16} (W weights -> W floats),
// fma(a, b, c) = a * b + c, name, and
// expand(mask, const WT* v, const WT* vend) -> vec whose lane i is the next value of v when bit i
// of mask is set (values consumed in order), else 0.
//
// Included by the ISA files only, inside their namespace, after simd_types.h and their ISA class.

// ------------------------------------------------------------------------------------------ teal
// acc rows: y + (t0 + t) * N + n0, nb columns each. Channels are taken four at a time so every
// accumulator load/store is shared by four weight rows.
template <class WT, int TB>
static void teal_block(const TealArgs& A, const WT* w, int64_t t0, int64_t n0, int64_t nb) {
  using V = typename ISA::vec;
  constexpr int W = ISA::W;
  const int64_t N = A.N, T = A.a.T, nnz = A.a.nnz;
  const float* xa = A.a.xa;
  const int32_t* idx = A.a.idx;
  float* acc[TB];
  for (int t = 0; t < TB; ++t) {
    acc[t] = A.y + (t0 + t) * N + n0;
    zero_floats(acc[t], nb);
  }
  const int64_t nv = nb / W * W;
  int64_t c = 0;
  for (; c + 4 <= nnz; c += 4) {
    const WT* r0 = w + (int64_t)idx[c] * N + n0;
    const WT* r1 = w + (int64_t)idx[c + 1] * N + n0;
    const WT* r2 = w + (int64_t)idx[c + 2] * N + n0;
    const WT* r3 = w + (int64_t)idx[c + 3] * N + n0;
    float xs[4][TB];
    V xv[4][TB];
    for (int i = 0; i < 4; ++i)
      for (int t = 0; t < TB; ++t) {
        xs[i][t] = xa[(c + i) * T + t0 + t];
        xv[i][t] = ISA::set1(xs[i][t]);
      }
    // the next four rows' segments are prefetched while these four are read: the segments are
    // short (a chunk of columns), so the hardware prefetcher alone would restart on every row
    const bool pf = c + 8 <= nnz;
    const WT* q0 = pf ? w + (int64_t)idx[c + 4] * N + n0 : r0;
    const WT* q1 = pf ? w + (int64_t)idx[c + 5] * N + n0 : r1;
    const WT* q2 = pf ? w + (int64_t)idx[c + 6] * N + n0 : r2;
    const WT* q3 = pf ? w + (int64_t)idx[c + 7] * N + n0 : r3;
    constexpr int64_t LINE = 64 / sizeof(WT);
    for (int64_t n = 0; n < nv; n += W) {
      if (n % LINE == 0) {
        __builtin_prefetch(q0 + n);
        __builtin_prefetch(q1 + n);
        __builtin_prefetch(q2 + n);
        __builtin_prefetch(q3 + n);
      }
      const V w0 = ISA::load(r0 + n), w1 = ISA::load(r1 + n), w2 = ISA::load(r2 + n), w3 = ISA::load(r3 + n);
      for (int t = 0; t < TB; ++t) {
        V a = ISA::loadf(acc[t] + n);
        a = ISA::fma(xv[0][t], w0, a);
        a = ISA::fma(xv[1][t], w1, a);
        a = ISA::fma(xv[2][t], w2, a);
        a = ISA::fma(xv[3][t], w3, a);
        ISA::storef(acc[t] + n, a);
      }
    }
    for (int64_t n = nv; n < nb; ++n) {
      const float w0 = to_f(r0[n]), w1 = to_f(r1[n]), w2 = to_f(r2[n]), w3 = to_f(r3[n]);
      for (int t = 0; t < TB; ++t)
        acc[t][n] += xs[0][t] * w0 + xs[1][t] * w1 + xs[2][t] * w2 + xs[3][t] * w3;
    }
  }
  for (; c < nnz; ++c) {
    const WT* r0 = w + (int64_t)idx[c] * N + n0;
    float xs[TB];
    V xv[TB];
    for (int t = 0; t < TB; ++t) {
      xs[t] = xa[c * T + t0 + t];
      xv[t] = ISA::set1(xs[t]);
    }
    for (int64_t n = 0; n < nv; n += W) {
      const V w0 = ISA::load(r0 + n);
      for (int t = 0; t < TB; ++t) ISA::storef(acc[t] + n, ISA::fma(xv[t], w0, ISA::loadf(acc[t] + n)));
    }
    for (int64_t n = nv; n < nb; ++n) {
      const float w0 = to_f(r0[n]);
      for (int t = 0; t < TB; ++t) acc[t][n] += xs[t] * w0;
    }
  }
}

template <class WT>
static void teal_range_t(const TealArgs& A, int64_t n0, int64_t n1) {
  const WT* w = static_cast<const WT*>(A.w_t);
  const int64_t T = A.a.T;
  for (int64_t t0 = 0; t0 < T;) {
    const int64_t left = T - t0;
    const int tb = left >= 4 ? 4 : (left >= 2 ? 2 : 1);
    const int64_t NB = 4096 / tb;  // tb * NB fp32 accumulators = 16 KiB (L1)
    for (int64_t nb0 = n0; nb0 < n1; nb0 += NB) {
      const int64_t nb = min64(NB, n1 - nb0);
      if (tb == 4)
        teal_block<WT, 4>(A, w, t0, nb0, nb);
      else if (tb == 2)
        teal_block<WT, 2>(A, w, t0, nb0, nb);
      else
        teal_block<WT, 1>(A, w, t0, nb0, nb);
    }
    t0 += tb;
  }
}

static void teal_range(const TealArgs& A, int64_t n0, int64_t n1) {
  switch (A.wtype) {
    case WType::F32: return teal_range_t<float>(A, n0, n1);
    case WType::BF16: return teal_range_t<bf16>(A, n0, n1);
    case WType::F16: return teal_range_t<f16>(A, n0, n1);
  }
}

// ------------------------------------------------------------------------------------------ spdp
// One R-row tile, TB tokens: its R accumulators per token stay in registers; for every active
// column the tile column's non-zeros are expanded W rows at a time from the bitmap.
template <class WT, int R, int TB>
static void spdp_tile(const SpdpArgs& A, int64_t r, int64_t t0) {
  using V = typename ISA::vec;
  constexpr int W = ISA::W;
  constexpr int Q = R / W;  // vectors per tile column
  constexpr int WORDS = R / 32;
  const int64_t K = A.K, T = A.a.T, nnz = A.a.nnz;
  const float* xa = A.a.xa;
  const int32_t* idx = A.a.idx;
  const WT* values = static_cast<const WT*>(A.values);
  const WT* vend = values + A.offsets[(A.N + R - 1) / R * K];
  const uint32_t* bitmap = reinterpret_cast<const uint32_t*>(A.bitmap) + r * K * WORDS;
  const int32_t* offsets = A.offsets + r * K;
  V acc[TB][Q];
  for (int t = 0; t < TB; ++t)
    for (int q = 0; q < Q; ++q) acc[t][q] = ISA::zero();
  for (int64_t c = 0; c < nnz; ++c) {
    const int64_t j = idx[c];
    const uint32_t* bm = bitmap + j * WORDS;
    const WT* v = values + offsets[j];
    V xv[TB];
    for (int t = 0; t < TB; ++t) xv[t] = ISA::set1(xa[c * T + t0 + t]);
    for (int q = 0; q < Q; ++q) {
      const uint32_t word = bm[(q * W) / 32];
      const uint32_t m = W == 32 ? word : (word >> ((q * W) % 32)) & ((1u << (W % 32)) - 1u);
      if (m == 0) continue;
      const V wv = ISA::expand(m, v, vend);
      v += __builtin_popcount(m);
      for (int t = 0; t < TB; ++t) acc[t][q] = ISA::fma(xv[t], wv, acc[t][q]);
    }
  }
  const int64_t row0 = r * R, rows = min64(R, A.N - row0);
  for (int t = 0; t < TB; ++t) {
    float* out = A.y + (t0 + t) * A.N + row0;
    if (rows == R) {
      for (int q = 0; q < Q; ++q) ISA::storef(out + q * W, acc[t][q]);
    } else {
      alignas(64) float tmp[R];
      for (int q = 0; q < Q; ++q) ISA::storef(tmp + q * W, acc[t][q]);
      std::memcpy(out, tmp, rows * sizeof(float));
    }
  }
}

template <class WT, int R>
static void spdp_range_r(const SpdpArgs& A, int64_t tile0, int64_t tile1) {
  const int64_t T = A.a.T;
  for (int64_t r = tile0; r < tile1; ++r)
    for (int64_t t0 = 0; t0 < T;) {
      const int64_t left = T - t0;
      if (left >= 4) {
        spdp_tile<WT, R, 4>(A, r, t0);
        t0 += 4;
      } else if (left >= 2) {
        spdp_tile<WT, R, 2>(A, r, t0);
        t0 += 2;
      } else {
        spdp_tile<WT, R, 1>(A, r, t0);
        t0 += 1;
      }
    }
}

template <class WT>
static void spdp_range_t(const SpdpArgs& A, int64_t tile0, int64_t tile1) {
  switch (A.R) {
    case 32: return spdp_range_r<WT, 32>(A, tile0, tile1);
    case 64: return spdp_range_r<WT, 64>(A, tile0, tile1);
    default: return spdp_range_r<WT, 128>(A, tile0, tile1);
  }
}

static void spdp_range(const SpdpArgs& A, int64_t tile0, int64_t tile1) {
  switch (A.wtype) {
    case WType::F32: return spdp_range_t<float>(A, tile0, tile1);
    case WType::BF16: return spdp_range_t<bf16>(A, tile0, tile1);
    case WType::F16: return spdp_range_t<f16>(A, tile0, tile1);
  }
}

// --------------------------------------------------------------------------------------- spinfer
// One 64-row group row: every 64x64 group tile is decoded (transposed: wt[k][row]) into L1, then
// all tokens accumulate over its 64 columns. Plain loops; the compiler vectorises them.
template <class WT>
static void spinfer_range_t(const SpinferArgs& A, int64_t g0, int64_t g1) {
  const WT* values = static_cast<const WT*>(A.values);
  const int64_t T = A.T, gk = A.Kp / 64;
  alignas(64) float wt[64][64];
  float* acc = new float[T * 64];
  for (int64_t gr = g0; gr < g1; ++gr) {
    zero_floats(acc, T * 64);
    for (int64_t gc = 0; gc < gk; ++gc) {
      const int64_t g = gr * gk + gc;
      if (A.group_offsets[g + 1] == A.group_offsets[g]) continue;
      std::memset(wt, 0, sizeof(wt));
      for (int tc = 0; tc < 4; ++tc) {
        const WT* v = values + A.group_offsets[g] + A.tile_offsets[g * 4 + tc];
        for (int b = 0; b < 16; ++b) {
          uint64_t bm = static_cast<uint64_t>(A.bitmaps[g * 64 + tc * 16 + b]);
          const int row0 = tc * 16 + (b & 1) * 8, col0 = (b >> 1) * 8;
          while (bm) {
            const int i = __builtin_ctzll(bm);
            wt[col0 + (i & 7)][row0 + (i >> 3)] = to_f(*v++);
            bm &= bm - 1;
          }
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* xr = A.x + t * A.Kp + gc * 64;
        float* ar = acc + t * 64;
        for (int k = 0; k < 64; ++k) {
          const float xv = xr[k];
          if (xv == 0.f) continue;
          for (int r = 0; r < 64; ++r) ar[r] += xv * wt[k][r];
        }
      }
    }
    const int64_t rows = min64(64, A.N - gr * 64);
    for (int64_t t = 0; t < T; ++t) std::memcpy(A.y + t * A.N + gr * 64, acc + t * 64, rows * sizeof(float));
  }
  delete[] acc;
}

static void spinfer_range(const SpinferArgs& A, int64_t g0, int64_t g1) {
  switch (A.wtype) {
    case WType::F32: return spinfer_range_t<float>(A, g0, g1);
    case WType::BF16: return spinfer_range_t<bf16>(A, g0, g1);
    case WType::F16: return spinfer_range_t<f16>(A, g0, g1);
  }
}

static const Kernels kTable = {ISA::name, &teal_range, &spdp_range, &spinfer_range};
