// teal_matvec / teal_matvec_sel on CUDA (kernel: matvec.cuh with R == 0).
#include "matvec_run.h"

namespace sparsekit::cuda {

namespace {

constexpr int kDefaultLpr = 16;  // 16 lanes x 16 bytes = 256-byte row segments (see NOTES_cuda.md)

at::Tensor teal_run(const at::Tensor& x, const at::Tensor* idx, const at::Tensor* nnz, const at::Tensor& w_t,
                    double threshold, const char* op) {
  check_x(x, op);
  TORCH_CHECK(w_t.is_cuda() && w_t.device() == x.device(), op, ": w_t must be on x's device");
  TORCH_CHECK(w_t.dim() == 2 && w_t.size(0) == x.size(-1), op, ": x has ", x.size(-1), " channels but w_t has shape ",
              w_t.sizes(), " (expected [K, N])");
  TORCH_CHECK(w_t.scalar_type() == x.scalar_type(), op, ": w_t must have x's dtype");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = w_t.size(0), N = w_t.size(1);
  const int64_t T = K > 0 ? x.numel() / K : 0;
  auto y = at::empty(out_shape(x, N), x.options());
  if (T == 0 || N == 0) return y;
  if (K == 0) return y.zero_();
  TORCH_CHECK(K < (int64_t(1) << 31) && N < (int64_t(1) << 31) && T < (int64_t(1) << 31), op, ": sizes too large");
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w_t.contiguous();
  const int device = x.get_device();

  sk::MatvecParams p{};
  p.x = xc.data_ptr();
  p.fused = idx == nullptr ? 1 : 0;
  if (idx != nullptr) {
    p.idx = idx->data_ptr<int>();
    p.nnz = nnz->data_ptr<int>();
    p.idx_len = static_cast<int>(std::min<int64_t>(idx->numel(), K));
  }
  p.thr = cast_threshold(threshold, x.scalar_type());
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
  auto stream = at::cuda::getCurrentCUDAStream();
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

at::Tensor teal_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz, const at::Tensor& w_t) {
  check_x(xs, "teal_matvec_sel");
  check_sel(xs, idx, nnz, "teal_matvec_sel");
  const at::Tensor ic = idx.contiguous(), nc = nnz.contiguous();
  return teal_run(xs, &ic, &nc, w_t, 0.0, "teal_matvec_sel");
}

}  // namespace sparsekit::cuda
