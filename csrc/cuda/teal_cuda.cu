// teal_matvec / teal_matvec_sel on CUDA: matvec.cuh with R == 0 (split-K, cluster reduction).
// teal1.cuh (one token: a block per output tile, all channels, no cross-block reduction) is opt-in,
// tune("teal1", 1): on the H200 it was not faster except marginally at 4096x4096 with >= 50% of the
// channels inactive (NOTES_cuda.md, iteration 2).
#include "matvec_run.h"
#include "teal1.cuh"

namespace sparsekit::cuda {

namespace {

constexpr int kDefaultLpr = 16;  // 16 lanes x 16 bytes = 256-byte row segments (see NOTES_cuda.md)

// The one-token kernel, when the call fits it; returns false to leave the call to matvec.cuh.
template <typename T>
bool teal1_try(const at::Tensor& xc, const at::Tensor* idx, const at::Tensor* nnz, const at::Tensor& wc,
               at::Tensor& y, float thr, int64_t T_, int64_t K, int64_t N, int device, cudaStream_t stream) {
  if (tuning().teal1 == 0 || T_ != 1) return false;
  constexpr int VEC = sk::Vec<T>::N;
  const bool fused = idx == nullptr;
  if (N % VEC != 0 || reinterpret_cast<uintptr_t>(wc.data_ptr()) % 16 != 0) return false;
  if (K * N >= (int64_t(1) << 32)) return false;  // 32-bit row offsets
  if (fused && (K % VEC != 0 || reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 != 0)) return false;
  const int sms = sm_count(device);
  sk::Teal1Params p{};
  p.x = xc.data_ptr();
  p.fused = fused ? 1 : 0;
  if (!fused) {
    p.idx = idx->data_ptr<int>();
    p.nnz = nnz->data_ptr<int>();
    p.idx_len = static_cast<int>(std::min<int64_t>(idx->numel(), K));
  }
  p.thr = thr;
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.y = y.data_ptr();
  p.w = wc.data_ptr();
  const sk::Teal1Plan plan = sk::teal1_plan<T>(p, sms, tuning().teal1_lpr, tuning().teal1_threads);
  const bool pdl = tuning().pdl != 0 && cc_major(device) >= 9;
  const cudaError_t err = sk::teal1_launch<T>(p, plan, device, stream, pdl);
  C10_CUDA_CHECK(err);
  tuning().last_split = 1;
  tuning().last_teal1 = 1;
  return true;
}

// glu: x is [..., 2K], the stacked gate/up outputs, and the product's input is silu(gate) * up.
at::Tensor teal_run(const at::Tensor& x, const at::Tensor* idx, const at::Tensor* nnz, const at::Tensor& w_t,
                    double threshold, const char* op, bool relative = false, bool glu = false) {
  check_x(x, op);
  TORCH_CHECK(w_t.is_cuda() && w_t.device() == x.device(), op, ": w_t must be on x's device");
  TORCH_CHECK(w_t.dim() == 2, op, ": w_t must be 2-D [K, N], got shape ", w_t.sizes());
  const int64_t xk = glu ? 2 * w_t.size(0) : w_t.size(0);  // x's channels
  TORCH_CHECK(x.size(-1) == xk, op, ": x has ", x.size(-1), " channels but w_t has shape ", w_t.sizes(),
              glu ? " (expected x [..., 2K] for w_t [K, N])" : " (expected [K, N])");
  TORCH_CHECK(w_t.scalar_type() == x.scalar_type(), op, ": w_t must have x's dtype");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = w_t.size(0), N = w_t.size(1);
  const int64_t T = xk > 0 ? x.numel() / xk : 0;
  auto y = at::empty(out_shape(x, N), x.options());
  if (T == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  TORCH_CHECK(K < (int64_t(1) << 31) && N < (int64_t(1) << 31) && T < (int64_t(1) << 31), op, ": sizes too large");
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w_t.contiguous();
  const int device = x.get_device();
  auto stream = at::cuda::getCurrentCUDAStream();
  const float thr = mask_threshold(threshold, x.scalar_type(), relative);
  bool done = false;
  if (!relative && !glu) switch (x.scalar_type()) {  // the one-token kernel has no relative rule or glu input
    case at::kHalf: done = teal1_try<__half>(xc, idx, nnz, wc, y, thr, T, K, N, device, stream); break;
    case at::kBFloat16: done = teal1_try<__nv_bfloat16>(xc, idx, nnz, wc, y, thr, T, K, N, device, stream); break;
    default: done = teal1_try<float>(xc, idx, nnz, wc, y, thr, T, K, N, device, stream); break;
  }
  if (done) return y;
  tuning().last_teal1 = 0;

  sk::MatvecParams p{};
  p.x = xc.data_ptr();
  p.fused = idx == nullptr ? 1 : 0;
  if (idx != nullptr) {
    p.idx = idx->data_ptr<int>();
    p.nnz = nnz->data_ptr<int>();
    p.idx_len = static_cast<int>(std::min<int64_t>(idx->numel(), K));
  }
  p.thr = thr;
  p.relative = relative ? 1 : 0;
  p.glu = glu ? 1 : 0;
  p.xvec = rows_vec16(xc);
  p.T = static_cast<int>(T);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.y = y.data_ptr();
  p.w = wc.data_ptr();
  p.lpr = tuning().teal_lpr > 0 ? tuning().teal_lpr : kDefaultLpr;
  const int vec = 16 / static_cast<int>(x.element_size());
  p.vec = (N % vec == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0) ? 1 : 0;
  // narrow outputs: fewer lanes per row segment, so that tiles cover N without idle lanes
  while (p.lpr > 8 && static_cast<int64_t>(p.lpr / 2) * vec >= N) p.lpr /= 2;
  const int tile_out = p.lpr * vec;
  const int tiles = static_cast<int>((N + tile_out - 1) / tile_out);
  constexpr int kMinRowsPerSlice = 64;
  switch (x.scalar_type()) {
    case at::kHalf: matvec_dispatch<__half, 0>(p, tiles, device, stream, kMinRowsPerSlice); break;
    case at::kBFloat16: matvec_dispatch<__nv_bfloat16, 0>(p, tiles, device, stream, kMinRowsPerSlice); break;
    default: matvec_dispatch<float, 0>(p, tiles, device, stream, kMinRowsPerSlice); break;
  }
  return y;
}

}  // namespace

at::Tensor teal_matvec(const at::Tensor& x, const at::Tensor& w_t, double threshold) {
  return teal_run(x, nullptr, nullptr, w_t, threshold, "teal_matvec");
}

at::Tensor teal_matvec_rel(const at::Tensor& x, const at::Tensor& w_t, double threshold) {
  return teal_run(x, nullptr, nullptr, w_t, threshold, "teal_matvec_rel", true);
}

at::Tensor teal_matvec_glu(const at::Tensor& gu, const at::Tensor& w_t, double threshold) {
  return teal_run(gu, nullptr, nullptr, w_t, threshold, "teal_matvec_glu", false, true);
}

at::Tensor teal_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz, const at::Tensor& w_t) {
  check_x(xs, "teal_matvec_sel");
  check_sel(xs, idx, nnz, "teal_matvec_sel");
  const at::Tensor ic = idx.contiguous(), nc = nnz.contiguous();
  return teal_run(xs, &ic, &nc, w_t, 0.0, "teal_matvec_sel");
}

int teal_max_clusters(int device, int S) {
  C10_CUDA_CHECK((sk::matvec_prepare<__half, 1, 0, false>(device)));
  return sk::matvec_max_clusters<__half, 1, 0, false>(device, S);
}

}  // namespace sparsekit::cuda
