// Torch-side launcher shared by teal_cuda.cu and spdp_cuda.cu: shapes, checks, token chunks,
// channel slices, dtype dispatch.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <vector>

#include "matvec.cuh"
#include "ops_cuda.h"

namespace sparsekit::cuda {

inline void check_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz, const char* op) {
  TORCH_CHECK(idx.is_cuda() && nnz.is_cuda() && idx.device() == xs.device() && nnz.device() == xs.device(), op,
              ": idx and nnz must be on x's device");
  TORCH_CHECK(idx.scalar_type() == at::kInt && nnz.scalar_type() == at::kInt, op, ": idx and nnz must be int32");
  TORCH_CHECK(nnz.numel() >= 1, op, ": nnz must hold one value");
}

// The fused ops' threshold: absolute, compared as torch compares `x.abs() > t` (t in x's dtype);
// relative (reference.mask_relative), a float32 factor of each token's mean |x|.
inline float mask_threshold(double t, at::ScalarType dtype, bool relative) {
  return relative ? static_cast<float>(t) : cast_threshold(t, dtype);
}

// 1 when the rows of a contiguous [T, K] x can be read as aligned 16-byte vectors.
inline int rows_vec16(const at::Tensor& xc) {
  const int64_t K = xc.size(-1);
  return (K % (16 / xc.element_size()) == 0 && reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 == 0) ? 1 : 0;
}

// Tokens per block: 1, 4 or 8 (T > 8 runs in chunks of 8 along grid z).
inline int token_chunk(int64_t T) { return T == 1 ? 1 : (T <= 4 ? 4 : 8); }

template <typename T, int TC, int R, int V>
void matvec_dispatch_tc(sk::MatvecParams& p, int tiles, int device, cudaStream_t stream, int min_per_slice) {
  const int tchunks = (p.T + TC - 1) / TC;
  const cudaError_t prep = sk::matvec_prepare<T, TC, R, V>(device);
  C10_CUDA_CHECK(prep);
  const int bps = sk::matvec_blocks_per_sm<T, TC, R, V>(device);
  using C = sk::MvCfg<T, TC, R, V>;
  p.S = choose_split_fit<sk::matvec_kernel<T, TC, R, V>>(device, tiles * tchunks, bps, std::max(1, p.K / min_per_slice),
                                                         C::NTHREADS, C::SMEM);
  p.pipe = C::PIPE ? 1 : 0;
  p.l2pf = R == 0 ? tuning().l2pf : 0;
  if constexpr (C::PROBE) {
    static_assert(sk::TR_N == 8, "trace_slots counts 8 slots per block");
    p.trace = trace_slots(static_cast<int64_t>(tiles) * p.S * tchunks, device);
  }
  const bool pdl = tuning().pdl != 0 && cc_major(device) >= 9;
  const cudaError_t err = sk::matvec_launch<T, TC, R, V>(p, tiles, tchunks, stream, pdl);
  C10_CUDA_CHECK(err);
}

// Variant 4: SPDP's one-token staged kernel for 16-bit values (tune("spdp_stage"): 0 = automatic, i.e.
// for 64- and 128-row tiles whose values start 16-byte aligned, 1 = at every tile size, 2 = never); it
// comes before the others. On the H200 it takes 4-11 % less time than the nibble kernel at 64 and 128
// rows and up to 17 % more at 32 (benchmarks/NOTES.md, "Tenth session").
// Variant 2: SPDP's one-token nibble kernel for 16-bit values (tune("spdp_nib"): 0 = automatic, i.e.
// whenever the values are 4-byte aligned, 1 = the same, 2 = never).
// Variant 1 instantiations: TEAL's cp.async ring (tune("pipe", 1)); SPDP's deep one-token kernel
// (T = 1 only). spdp_deep 0 (automatic) takes it for 128-row tiles only: there it takes 15-19% less
// time (the V = 0 instantiation spills at 64 registers), while at 32 and 64 rows it takes 13-37% more
// (16 warps per SM against 32; H200, benchmarks/NOTES.md). 1: always, 2: never.
template <typename T, int TC, int R>
void matvec_dispatch_pipe(sk::MatvecParams& p, int tiles, int device, cudaStream_t stream, int min_per_slice) {
  if constexpr (R == 0) {
    if (tuning().pipe != 0 && p.vec) return matvec_dispatch_tc<T, TC, R, 1>(p, tiles, device, stream, min_per_slice);
    if (trace_slots(0, device) != nullptr) return matvec_dispatch_tc<T, TC, R, 3>(p, tiles, device, stream, min_per_slice);
  } else if constexpr (TC == 1) {
    if constexpr (sizeof(T) == 2) {
      // STG (values staged through shared memory by 16-byte cp.async: values must start 16-byte aligned)
      const bool aligned16 = reinterpret_cast<uintptr_t>(p.w) % 16 == 0;
      const int stg = tuning().spdp_stage;
      if (aligned16 && (stg == 1 || (stg == 0 && R >= 64))) return matvec_dispatch_tc<T, TC, R, 4>(p, tiles, device, stream, min_per_slice);
      // NIB (a lane owns 4 rows; 4-byte value loads, so values must start 4-byte aligned)
      const int nib = tuning().spdp_nib;
      const bool aligned4 = reinterpret_cast<uintptr_t>(p.w) % 4 == 0;
      if (aligned4 && nib != 2) return matvec_dispatch_tc<T, TC, R, 2>(p, tiles, device, stream, min_per_slice);
    }
    const int deep = tuning().spdp_deep;
    if (deep == 1 || (deep == 0 && R == 128)) return matvec_dispatch_tc<T, TC, R, 1>(p, tiles, device, stream, min_per_slice);
  }
  matvec_dispatch_tc<T, TC, R, 0>(p, tiles, device, stream, min_per_slice);
}

template <typename T, int R>
void matvec_dispatch(sk::MatvecParams& p, int tiles, int device, cudaStream_t stream, int min_per_slice) {
  switch (token_chunk(p.T)) {
    case 1: matvec_dispatch_pipe<T, 1, R>(p, tiles, device, stream, min_per_slice); break;
    case 4: matvec_dispatch_pipe<T, 4, R>(p, tiles, device, stream, min_per_slice); break;
    default: matvec_dispatch_pipe<T, 8, R>(p, tiles, device, stream, min_per_slice); break;
  }
}

}  // namespace sparsekit::cuda
