// Torch-side declarations shared by the CUDA translation units (ops_cuda.cu registers them).
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "common.cuh"

namespace sparsekit::cuda {

// Knobs for benchmarks and tests (op sparsekit_cuda::tune); 0 = automatic.
struct Tuning {
  int split = 0;     // force the number of channel slices (cluster size, <= 8; 1 on pre-Hopper GPUs)
  int teal_lpr = 0;  // TEAL lanes per row segment: 8, 16 or 32
  int pipe = 0;      // teal weight streaming: 0 = batches of register loads, 1 = cp.async ring
  int pdl = 0;       // 1: launch with programmatic stream serialization (overlap with the previous kernel)
  int spdp_deep = 0;  // one-token spdp, deep variant (MvCfg DEEP): 0 = for 128-row tiles, 1 = always, 2 = never
  int spdp_stage = 0;  // one-token spdp of 16-bit values, staged variant (MvCfg STG): 0 = 64/128-row tiles, 1 = every tile size (values 16-byte aligned), 2 = never
  int spdp_bal = 0;   // spdp of 16-bit values, balanced paths (one token: MvCfg BAL, per block; several: spdp_mm.cuh, per expansion unit): 0 = where the 2:4-over-rows pattern holds, 1 = required (tests: a block or unit without it traps), 2 = never
  int spdp_nib = 0;   // one-token spdp of 16-bit values, nibble variant (MvCfg NIB): 0/1 = where values are 4-byte aligned, 2 = never
  int spdp_mm = 0;    // several-token spdp on tensor cores (spdp_mm.cuh): 0 = from kSpdpMmMinTokens tokens, 1 = from 2, 2 = never (also spdp_decode)
  int spdp_mm_rows = 16;  // rows one thread expands per unit in that kernel: 16 or 8
  int spdp_mm_tn = 0;  // tokens per block in that kernel: 0 = automatic (8, 16, 32 or 64, the smallest holding T), or one of those
  int spdp_mm_strips = 0;  // m16 strips per warp in that kernel's fixed-layout variant up to 32 tokens: 0 = automatic (2 up to 16 tokens, 1 above), 1 or 2
  int spinfer_warps = 4;  // 4 or 8 warps per spinfer block (4 measured faster on the H200)
  int teal1 = 0;          // one-token teal kernel (teal1.cuh): 0 = off (matvec.cuh measured faster), 1 = on where it applies
  int teal1_threads = 0;  // its block size: 0 = automatic, 256, 512 or 1024
  int teal1_lpr = 0;      // its lanes per row segment: 0 = automatic, 4, 8, 16 or 32
  int l2pf = 0;           // fused teal: channels per block whose row segments are prefetched into L2 at the start
  int last_split = 0;  // read-only: the slices chosen by the last launch
  int last_teal1 = 0;  // read-only: 1 when the last teal launch used the one-token kernel
  int last_spdp_fix = 0;  // read-only: 1 when the last spdp_matvec(_rel, _glu, _sel) ran the fixed-layout one-token
                          // kernel, 2 when spdp_matvec ran the tensor-core kernel's fixed-layout variant
  int last_spdp_mm = 0;  // read-only: 1 when the last spdp_matvec or spdp_decode ran spdp_mm.cuh
};
Tuning& tuning();
// spdp_matvec runs the tensor-core kernel from this many tokens (fp16/bf16, K % 8 == 0).
constexpr int64_t kSpdpMmMinTokens = 4;
// Diagnostics (op sparsekit_cuda::trace): while a buffer is set, teal matvec launches run the PROBE
// instantiation, which writes each block's timeline into it (sk::TR_N int64 slots per block);
// nullptr otherwise. Checks that the buffer is on `device` and holds `blocks` records.
unsigned long long* trace_slots(int64_t blocks, int device);

int sm_count(int device);
int cc_major(int device);
// Channel slices for `base` blocks (tiles x token chunks): fill the resident slots once, at most
// 8 (the portable cluster size), at most `max_slices`, 1 where clusters do not exist.
int choose_split(int device, int base, int blocks_per_sm, int max_slices);
// choose_split for the clustered launch of `Kernel` (`threads` threads, `smem` dynamic bytes): unless
// tune("split") forces the split, it is then lowered until all `base` clusters are resident in the first wave
// (sk::fit_clusters).
template <auto Kernel>
int choose_split_fit(int device, int base, int blocks_per_sm, int max_slices, int threads, size_t smem) {
  int s = choose_split(device, base, blocks_per_sm, max_slices);
  if (tuning().split == 0) tuning().last_split = s = sk::fit_clusters<Kernel>(device, s, base, threads, smem);
  return s;
}
// Resident clusters of S blocks for the fp16 one-token teal kernel (diagnostics: tune("clusters", S)).
int teal_max_clusters(int device, int S);
// x of a product: a CUDA tensor of fp16, bf16 or fp32 with at least one dimension (else one sentence).
inline void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat, op,
              ": x must be float16, bfloat16 or float32");
}

// x's shape with the last dimension n (the product's output).
inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}

// The threshold as torch compares it: `x.abs() > t` casts the Python float to x's dtype.
float cast_threshold(double t, at::ScalarType dtype);

std::tuple<at::Tensor, at::Tensor, at::Tensor> select(const at::Tensor& x, double threshold);
at::Tensor teal_matvec(const at::Tensor& x, const at::Tensor& w_t, double threshold);
// The relative rule (reference.mask_relative) fused: keep |x| > threshold * the token's mean |x|.
at::Tensor teal_matvec_rel(const at::Tensor& x, const at::Tensor& w_t, double threshold);
at::Tensor spdp_matvec_rel(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                           const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold);
// The SwiGLU input fused (reference.teal_matvec_glu / spdp_matvec_glu): gu is [..., 2K], the stacked
// gate/up outputs, and the product reads silu(gate) * up.
at::Tensor teal_matvec_glu(const at::Tensor& gu, const at::Tensor& w_t, double threshold);
at::Tensor spdp_matvec_glu(const at::Tensor& gu, const at::Tensor& values, const at::Tensor& bitmap,
                           const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold);
at::Tensor teal_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz, const at::Tensor& w_t);
at::Tensor spdp_matvec(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                       const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold);
at::Tensor spdp_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz,
                           const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                           int64_t tile_rows);
at::Tensor spdp_decode(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                       int64_t k, int64_t tile_rows);
at::Tensor spinfer_matmul(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmaps,
                          const at::Tensor& tile_offsets, const at::Tensor& group_offsets, int64_t n, int64_t k);
at::Tensor rowdelta_matvec(const at::Tensor& x, const at::Tensor& values, const at::Tensor& deltas,
                           const at::Tensor& row_offsets, int64_t n, int64_t k);

}  // namespace sparsekit::cuda
