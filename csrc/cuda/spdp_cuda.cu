// spdp_matvec / spdp_matvec_sel on CUDA (kernels: matvec.cuh with R = tile_rows; spdp_mm.cuh, the
// tensor-core kernel, for several tokens), and spdp_decode (kernels: spdp_mm.cuh with TN = 0, or the
// one-pass spdp_decode.cuh).
#include "matvec_run.h"
#include "spdp_decode.cuh"
#include "spdp_mm.cuh"

namespace sparsekit::cuda {

namespace {

template <typename T>
void spdp_dispatch_r(sk::MatvecParams& p, int tiles, int R, int device, cudaStream_t stream) {
  constexpr int kMinColsPerSlice = 64;
  switch (R) {
    case 32: matvec_dispatch<T, 32>(p, tiles, device, stream, kMinColsPerSlice); break;
    case 64: matvec_dispatch<T, 64>(p, tiles, device, stream, kMinColsPerSlice); break;
    default: matvec_dispatch<T, 128>(p, tiles, device, stream, kMinColsPerSlice); break;
  }
}

// The fixed balanced layout (matvec.cuh, V = 5): the TEAL skeleton with lpr = R / 8 lanes per tile column.
template <typename T>
void fix_dispatch(sk::MatvecParams& p, int tiles, int device, cudaStream_t stream) {
  constexpr int kMinColsPerSlice = 64;
  if (p.T == 1) matvec_dispatch_tc<T, 1, 0, 5>(p, tiles, device, stream, kMinColsPerSlice);
  else matvec_dispatch_tc<T, 4, 0, 5>(p, tiles, device, stream, kMinColsPerSlice);
}

// ---- the tensor-core kernel (spdp_mm.cuh) ----------------------------------------------------
template <typename T, int R, int TN, int G, bool FX = false, int MSX = 0>
void mm_go(sk::SpdpMmParams& p, int device, cudaStream_t stream) {
  using C = sk::MmCfg<R, TN, G, MSX, FX>;
  int bps = 1;
  C10_CUDA_CHECK((sk::spdp_mm_prepare<T, R, TN, G, FX, MSX>(device, &bps)));
  const int tiles = (p.N + R - 1) / R, tchunks = (p.T + TN - 1) / TN;
  const int nck = (p.K + C::KC - 1) / C::KC;
  p.S = choose_split_fit<sk::spdp_mm_kernel<T, R, TN, G, FX, MSX>>(device, tiles * tchunks, bps, nck, sk::kMmThreads,
                                                                    C::SMEM);
  if (tuning().split == 0) tuning().last_split = p.S = sk::mm_split(nck, p.S);
  const bool pdl = tuning().pdl != 0 && cc_major(device) >= 9;
  C10_CUDA_CHECK((sk::spdp_mm_launch<T, R, TN, G, FX, MSX>(p, stream, pdl)));
}

// G, the rows one thread expands per unit: 16 by default, 8 with tune("spdp_mm_rows", 8); fx: the fixed
// layout's variant (16 rows per unit only)
template <typename T, int R, int TN>
void mm_rows_per_unit(sk::SpdpMmParams& p, bool fx, int device, cudaStream_t stream) {
  if (fx) {
    // tune("spdp_mm_strips", 1 or 2) up to 32 tokens: the warp tiling other than the automatic one
    constexpr int ms = sk::MmCfg<R, TN, 16>::MS, other = ms == 1 ? 2 : 1;
    const int want = tuning().spdp_mm_strips;
    if constexpr (TN <= 32) {
      if (want != 0 && want != ms) return mm_go<T, R, TN, 16, true, other>(p, device, stream);
    }
    mm_go<T, R, TN, 16, true>(p, device, stream);
  }
  else if (tuning().spdp_mm_rows == 8) mm_go<T, R, TN, 8>(p, device, stream);
  else mm_go<T, R, TN, 16>(p, device, stream);
}

// TN, the tokens one block multiplies: the smallest of 8, 16, 32, 64 that holds T (more tokens run in chunks
// of 64 along grid z), or tune("spdp_mm_tn") when set (T then runs in chunks of that many)
template <typename T, int R>
void mm_tok(sk::SpdpMmParams& p, bool fx, int device, cudaStream_t stream) {
  const int forced = tuning().spdp_mm_tn;
  const int tn = forced > 0 ? forced : (p.T <= 8 ? 8 : (p.T <= 16 ? 16 : (p.T <= 32 ? 32 : 64)));
  if (tn == 8) mm_rows_per_unit<T, R, 8>(p, fx, device, stream);
  else if (tn == 16) mm_rows_per_unit<T, R, 16>(p, fx, device, stream);
  else if (tn == 32) mm_rows_per_unit<T, R, 32>(p, fx, device, stream);
  else mm_rows_per_unit<T, R, 64>(p, fx, device, stream);
}

template <typename T>
void mm_rows(sk::SpdpMmParams& p, int R, bool fx, int device, cudaStream_t stream) {
  switch (R) {
    case 32: mm_tok<T, 32>(p, fx, device, stream); break;
    case 64: mm_tok<T, 64>(p, fx, device, stream); break;
    default: mm_tok<T, 128>(p, fx, device, stream); break;
  }
}

// Whether spdp_matvec of T tokens runs the tensor-core kernel: fp16/bf16, K % 8 == 0, values
// 16-byte aligned, and T >= kSpdpMmMinTokens (knob spdp_mm: 1 = from 2 tokens, 2 = never).
bool use_mm(at::ScalarType dt, int64_t T, int64_t K, const at::Tensor& vc) {
  const int knob = tuning().spdp_mm;
  if (knob == 2 || (dt != at::kHalf && dt != at::kBFloat16) || K % 8 != 0) return false;
  if (reinterpret_cast<uintptr_t>(vc.data_ptr()) % 16 != 0) return false;
  return T >= (knob == 1 ? 2 : kSpdpMmMinTokens);
}

// Values readable from a contiguous values tensor's data pointer, capped at INT32_MAX: its storage may
// hold more than the view (the NIB kernel reads whole 4-byte pairs, so a run ending at the view's last
// value can read one value past it; the tensor-core kernel zero-fills its copies past this count).
int64_t readable_values(const at::Tensor& vc) {
  const int64_t avail = static_cast<int64_t>(vc.storage().nbytes() / vc.element_size()) - vc.storage_offset();
  return std::min<int64_t>(std::max<int64_t>(avail, vc.numel()), INT32_MAX);
}

// A tensor whose data starts `align`-byte aligned (a copy only when the input is not).
at::Tensor aligned(const at::Tensor& t, int align) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % align != 0) c = c.clone(at::MemoryFormat::Contiguous);
  return c;
}

// The spdp tensors of an [n, k] weight in R-row tiles: tile size, int32 types, sizes, and on `dev`.
// Returns the number of row tiles.
int64_t check_packed(const at::Tensor& bitmap, const at::Tensor& offsets, const at::Device& dev, int64_t n, int64_t k,
                     int64_t R, const char* op) {
  TORCH_CHECK(R == 32 || R == 64 || R == 128, op, ": tile_rows must be 32, 64 or 128 (negative: the same, in the "
              "fixed balanced layout), got ", R);
  TORCH_CHECK(n >= 0 && k >= 0, op, ": n and k must be >= 0");
  for (const at::Tensor* t : {&bitmap, &offsets})
    TORCH_CHECK(t->is_cuda() && t->device() == dev, op, ": the packed tensors must be on one CUDA device");
  TORCH_CHECK(bitmap.scalar_type() == at::kInt && offsets.scalar_type() == at::kInt, op,
              ": bitmap and offsets must be int32");
  const int64_t NT = (n + R - 1) / R;
  TORCH_CHECK(bitmap.numel() == NT * k * (R / 32), op, ": bitmap has ", bitmap.numel(), " words, expected ",
              NT * k * (R / 32), " for n=", n, ", k=", k, ", tile_rows=", R);
  TORCH_CHECK(offsets.numel() == NT * k + 1, op, ": offsets has ", offsets.numel(), " entries, expected ", NT * k + 1);
  return NT;
}

// tile_rows < 0 declares the fixed balanced layout (spdp.fixed_layout): -tile_rows rows per tile, every tile
// column holding exactly tile_rows / 2 values, two in each 4-row group, so value (tile * K + k) * R / 2 starts
// each and offsets need not be read. The kernel that uses it reads no offsets; the sizes are checked here
// (so no read leaves the tensors), the pattern by the caller.
at::Tensor spdp_run(const at::Tensor& x, const at::Tensor* idx, const at::Tensor* nnz, const at::Tensor& values,
                    const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n, int64_t tile_rows,
                    double threshold, const char* op, bool relative = false, bool glu = false) {
  check_x(x, op);
  const bool fixed = tile_rows < 0;
  const int64_t R = fixed ? -tile_rows : tile_rows;
  TORCH_CHECK(values.is_cuda() && values.device() == x.device(), op, ": the packed tensors must be on x's device");
  TORCH_CHECK(values.scalar_type() == x.scalar_type(), op, ": values must have x's dtype");
  const int64_t xk = x.size(-1);  // x's channels: K, or 2K for the stacked gate/up input of glu
  TORCH_CHECK(!glu || xk % 2 == 0, op, ": x must hold the gate and up halves, got an odd width ", xk);
  const int64_t K = glu ? xk / 2 : xk, N = n;
  const int64_t NT = check_packed(bitmap, offsets, x.device(), N, K, R, op);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = xk > 0 ? x.numel() / xk : 0;
  auto y = at::empty(out_shape(x, N), x.options());
  if (T == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  TORCH_CHECK(NT * K + 1 < (int64_t(1) << 31) && T < (int64_t(1) << 31), op, ": sizes too large");
  const at::Tensor xc = x.contiguous();
  const at::Tensor vc = values.contiguous();
  // 16-byte aligned for the tensor-core kernel's copies (the matvec kernels need R / 8 bytes)
  const at::Tensor bc = aligned(bitmap, 16), oc = aligned(offsets, 16);
  const int device = x.get_device();
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t nvals = readable_values(vc);

  // a declared fixed layout the kernels may address without offsets: whole tiles, every value there, int32 value
  // indices; tune("spdp_bal", 2) turns it off with the other balanced paths
  const bool fixed_ok = fixed && N % R == 0 && vc.numel() >= NT * K * (R / 2) && NT * K * (R / 2) < (int64_t(1) << 31) &&
                        tuning().spdp_bal != 2;
  const bool mm = idx == nullptr && !relative && !glu && use_mm(x.scalar_type(), T, K, vc);
  if (idx == nullptr) tuning().last_spdp_mm = mm ? 1 : 0;
  tuning().last_spdp_fix = 0;
  if (mm) {
    const at::Tensor xa = aligned(xc, 16);
    sk::SpdpMmParams q{};
    q.x = xa.data_ptr();
    q.vals = vc.data_ptr();
    q.bitmap = reinterpret_cast<const uint32_t*>(bc.data_ptr<int>());
    q.offsets = oc.data_ptr<int>();
    q.y = y.data_ptr();
    q.nvals = nvals;
    q.T = static_cast<int>(T);
    q.N = static_cast<int>(N);
    q.K = static_cast<int>(K);
    q.thr = mask_threshold(threshold, x.scalar_type(), false);
    q.bal = tuning().spdp_bal;
    // the fixed layout's variant (no offsets read, no per-unit pattern test); spdp_mm_rows=8 keeps the checked path
    const bool fx = fixed_ok && tuning().spdp_mm_rows != 8;
    tuning().last_spdp_fix = fx ? 2 : 0;
    if (x.scalar_type() == at::kHalf) mm_rows<__half>(q, static_cast<int>(R), fx, device, stream);
    else mm_rows<__nv_bfloat16>(q, static_cast<int>(R), fx, device, stream);
    return y;
  }

  // the fixed-layout one-token kernel: 16-bit values 8-byte aligned, up to 4 tokens per launch (more run as the
  // other paths do)
  const bool fix = fixed_ok && vc.element_size() == 2 && reinterpret_cast<uintptr_t>(vc.data_ptr()) % 8 == 0 && T <= 4;

  sk::MatvecParams p{};
  p.x = xc.data_ptr();
  p.fused = idx == nullptr ? 1 : 0;
  if (idx != nullptr) {
    p.idx = idx->data_ptr<int>();
    p.nnz = nnz->data_ptr<int>();
    p.idx_len = static_cast<int>(std::min<int64_t>(idx->numel(), K));
  }
  p.thr = mask_threshold(threshold, x.scalar_type(), relative);
  p.relative = relative ? 1 : 0;
  p.glu = glu ? 1 : 0;
  p.xvec = rows_vec16(xc);
  p.T = static_cast<int>(T);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.y = y.data_ptr();
  p.w = vc.data_ptr();
  p.bitmap = bc.data_ptr<int>();
  p.offsets = oc.data_ptr<int>();
  p.nvals = static_cast<int>(nvals);
  p.bal = tuning().spdp_bal;
  const int tiles = static_cast<int>(NT);
  tuning().last_spdp_fix = fix ? 1 : 0;
  if (fix) {
    p.lpr = static_cast<int>(R / 8);
    p.vec = 0;  // no TEAL row vectors (and so no L2 prefetch of w_t rows)
    if (x.scalar_type() == at::kHalf) fix_dispatch<__half>(p, tiles, device, stream);
    else fix_dispatch<__nv_bfloat16>(p, tiles, device, stream);
    return y;
  }
  switch (x.scalar_type()) {
    case at::kHalf: spdp_dispatch_r<__half>(p, tiles, static_cast<int>(R), device, stream); break;
    case at::kBFloat16: spdp_dispatch_r<__nv_bfloat16>(p, tiles, static_cast<int>(R), device, stream); break;
    default: spdp_dispatch_r<float>(p, tiles, static_cast<int>(R), device, stream); break;
  }
  return y;
}

template <typename E>
cudaError_t decode_dispatch_r(const at::Tensor& v, const at::Tensor& b, const at::Tensor& o, at::Tensor& out, int N,
                              int K, int64_t R, cudaStream_t stream) {
  const int* bp = b.data_ptr<int>();
  const int* op = o.data_ptr<int>();
  switch (R) {
    case 32: return sk::spdp_decode_launch<E, 32>(v.data_ptr(), bp, op, out.data_ptr(), N, K, stream);
    case 64: return sk::spdp_decode_launch<E, 64>(v.data_ptr(), bp, op, out.data_ptr(), N, K, stream);
    default: return sk::spdp_decode_launch<E, 128>(v.data_ptr(), bp, op, out.data_ptr(), N, K, stream);
  }
}

}  // namespace

at::Tensor spdp_decode(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                       int64_t k, int64_t tile_rows) {
  const char* op = "spdp_decode";
  const int64_t NT = check_packed(bitmap, offsets, values.device(), n, k, tile_rows, op);
  const int64_t es = values.element_size();
  TORCH_CHECK(es == 2 || es == 4, op, ": values must have 2- or 4-byte elements, got ", values.scalar_type());
  TORCH_CHECK(NT * k + 1 < (int64_t(1) << 31) && k <= int64_t(INT32_MAX) - sk::kDecodeCols, op, ": sizes too large");
  c10::cuda::CUDAGuard guard(values.device());
  auto out = at::empty({n, k}, values.options());
  if (n == 0 || k == 0) return out;
  const at::Tensor vc = values.reshape({-1}).contiguous();
  const at::Tensor bc = bitmap.reshape({-1}).contiguous();
  const at::Tensor oc = offsets.reshape({-1}).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  // 16-bit values, K % 8 == 0, values 16-byte aligned: the tensor-core kernel's copy and expansion
  // pipeline (spdp_mm.cuh, TN = 0); tune("spdp_mm", 2) keeps the one-pass kernel (spdp_decode.cuh)
  if (es == 2 && k % 8 == 0 && reinterpret_cast<uintptr_t>(vc.data_ptr()) % 16 == 0 && tuning().spdp_mm != 2) {
    const at::Tensor ba = aligned(bc, 16), oa = aligned(oc, 16);
    sk::SpdpMmParams q{};
    q.vals = vc.data_ptr();
    q.bitmap = reinterpret_cast<const uint32_t*>(ba.data_ptr<int>());
    q.offsets = oa.data_ptr<int>();
    q.y = out.data_ptr();
    q.nvals = readable_values(vc);
    q.N = static_cast<int>(n);
    q.K = static_cast<int>(k);
    q.bal = tuning().spdp_bal;
    tuning().last_spdp_mm = 1;
    const int device = values.get_device(), sms = sm_count(device);
    const cudaError_t e = tile_rows == 32   ? sk::spdp_mm_decode<32>(q, sms, stream, device)
                          : tile_rows == 64 ? sk::spdp_mm_decode<64>(q, sms, stream, device)
                                            : sk::spdp_mm_decode<128>(q, sms, stream, device);
    TORCH_CHECK(e == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(e));
    return out;
  }
  tuning().last_spdp_mm = 0;
  const cudaError_t e = es == 2 ? decode_dispatch_r<uint16_t>(vc, bc, oc, out, static_cast<int>(n), static_cast<int>(k),
                                                              tile_rows, stream)
                                : decode_dispatch_r<uint32_t>(vc, bc, oc, out, static_cast<int>(n), static_cast<int>(k),
                                                              tile_rows, stream);
  TORCH_CHECK(e == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(e));
  return out;
}

at::Tensor spdp_matvec(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                       const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold) {
  return spdp_run(x, nullptr, nullptr, values, bitmap, offsets, n, tile_rows, threshold, "spdp_matvec");
}

at::Tensor spdp_matvec_rel(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                           const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold) {
  return spdp_run(x, nullptr, nullptr, values, bitmap, offsets, n, tile_rows, threshold, "spdp_matvec_rel", true);
}

at::Tensor spdp_matvec_glu(const at::Tensor& gu, const at::Tensor& values, const at::Tensor& bitmap,
                           const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold) {
  return spdp_run(gu, nullptr, nullptr, values, bitmap, offsets, n, tile_rows, threshold, "spdp_matvec_glu", false,
                  true);
}

at::Tensor spdp_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz,
                           const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                           int64_t tile_rows) {
  check_x(xs, "spdp_matvec_sel");
  check_sel(xs, idx, nnz, "spdp_matvec_sel");
  const at::Tensor ic = idx.contiguous(), nc = nnz.contiguous();
  return spdp_run(xs, &ic, &nc, values, bitmap, offsets, n, tile_rows, 0.0, "spdp_matvec_sel");
}

}  // namespace sparsekit::cuda
