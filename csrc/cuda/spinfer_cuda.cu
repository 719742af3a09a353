// spinfer_matmul on CUDA (kernel: spinfer.cuh). fp16/bf16 run on tensor cores; float32 (or x and
// values of different dtypes) decode W on the GPU and multiply in fp32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <vector>

#include "ops_cuda.h"
#include "spinfer.cuh"

namespace sparsekit::cuda {

namespace {

template <typename T, int NTOK, int NWARP>
void spinfer_go(sk::SpinferParams& p, int device, cudaStream_t stream) {
  const int tchunks = (p.T + NTOK - 1) / NTOK;
  const int grows = (p.N + 63) / 64;
  const cudaError_t prep = sk::spinfer_prepare<T, NTOK, NWARP>(device);
  C10_CUDA_CHECK(prep);
  const int bps = sk::spinfer_blocks_per_sm<T, NTOK, NWARP>(device);
  p.S = choose_split_fit<sk::spinfer_kernel<T, NTOK, NWARP>>(device, grows * tchunks, bps, std::max(1, p.KG),
                                                              NWARP * 32, sk::SpiCfg<NTOK>::SMEM);
  const bool pdl = tuning().pdl != 0 && cc_major(device) >= 9;
  const cudaError_t err = sk::spinfer_launch<T, NTOK, NWARP>(p, tchunks, stream, pdl);
  C10_CUDA_CHECK(err);
}

template <typename T, int NTOK>
void spinfer_warps(sk::SpinferParams& p, int device, cudaStream_t stream) {
  if (tuning().spinfer_warps == 4) spinfer_go<T, NTOK, 4>(p, device, stream);
  else spinfer_go<T, NTOK, 8>(p, device, stream);
}

template <typename T>
void spinfer_tok(sk::SpinferParams& p, int device, cudaStream_t stream) {
  if (p.T <= 8) spinfer_warps<T, 8>(p, device, stream);
  else if (p.T <= 16) spinfer_warps<T, 16>(p, device, stream);
  else if (p.T <= 32) spinfer_warps<T, 32>(p, device, stream);
  else spinfer_warps<T, 64>(p, device, stream);
}

at::Tensor aligned16(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone(at::MemoryFormat::Contiguous);
  return c;
}

}  // namespace

at::Tensor spinfer_matmul(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmaps,
                          const at::Tensor& tile_offsets, const at::Tensor& group_offsets, int64_t n, int64_t k) {
  const char* op = "spinfer_matmul";
  check_x(x, op);
  const auto dt = x.scalar_type();
  TORCH_CHECK(x.size(-1) == k, op, ": x has ", x.size(-1), " channels but the weight has ", k, " inputs");
  TORCH_CHECK(n >= 0 && k >= 0, op, ": n and k must be >= 0");
  for (const at::Tensor* t : {&values, &bitmaps, &tile_offsets, &group_offsets})
    TORCH_CHECK(t->is_cuda() && t->device() == x.device(), op, ": the packed tensors must be on x's device");
  TORCH_CHECK(bitmaps.scalar_type() == at::kLong, op, ": bitmaps must be int64");
  TORCH_CHECK(tile_offsets.scalar_type() == at::kInt && group_offsets.scalar_type() == at::kInt, op,
              ": tile_offsets and group_offsets must be int32");
  const auto vt = values.scalar_type();
  TORCH_CHECK(vt == at::kHalf || vt == at::kBFloat16 || vt == at::kFloat, op, ": values must be a float tensor");
  const int64_t Np = (n + 63) / 64 * 64, Kp = (k + 63) / 64 * 64;
  const int64_t KG = Kp / 64, G = (Np / 64) * KG;
  TORCH_CHECK(bitmaps.numel() == G * 64 && tile_offsets.numel() == G * 4 && group_offsets.numel() == G + 1, op,
              ": the packed tensors do not match shape [", n, ", ", k, "]");
  TORCH_CHECK(k < (int64_t(1) << 31) && n < (int64_t(1) << 31), op, ": sizes too large");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = k > 0 ? x.numel() / k : 0;
  auto y = at::empty(out_shape(x, n), x.options());
  if (T == 0 || n == 0) return y;
  if (k == 0) return y.zero_();
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor bc = aligned16(bitmaps), tc = aligned16(tile_offsets), gc = group_offsets.contiguous();

  if (dt == at::kFloat || vt != dt) {
    // decode to dense on the GPU, then one fp32 product
    const at::Tensor vc = values.contiguous();
    auto w = at::empty({n, k}, values.options());
    if (G > 0) {
      if (values.element_size() == 2) {
        sk::spinfer_decode_kernel<uint16_t><<<static_cast<unsigned>(G), 64, 0, stream>>>(
            reinterpret_cast<const uint16_t*>(vc.data_ptr()), reinterpret_cast<const long long*>(bc.data_ptr()),
            tc.data_ptr<int>(), gc.data_ptr<int>(), reinterpret_cast<uint16_t*>(w.data_ptr()), static_cast<int>(n),
            static_cast<int>(k), static_cast<int>(KG));
      } else {
        sk::spinfer_decode_kernel<uint32_t><<<static_cast<unsigned>(G), 64, 0, stream>>>(
            reinterpret_cast<const uint32_t*>(vc.data_ptr()), reinterpret_cast<const long long*>(bc.data_ptr()),
            tc.data_ptr<int>(), gc.data_ptr<int>(), reinterpret_cast<uint32_t*>(w.data_ptr()), static_cast<int>(n),
            static_cast<int>(k), static_cast<int>(KG));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return at::matmul(x.to(at::kFloat), w.to(at::kFloat).t()).to(dt);
  }

  at::Tensor xc = x.contiguous().view({T, k});
  int64_t kx = k;
  if (k % 8 != 0 || reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 != 0) {
    kx = (k + 7) / 8 * 8;  // the kernel copies x in 16-byte pieces: pad its rows with zeros
    auto xp = at::zeros({T, kx}, x.options());
    xp.narrow(1, 0, k).copy_(xc);
    xc = xp;
  }
  const at::Tensor vc = aligned16(values);
  sk::SpinferParams p{};
  p.x = xc.data_ptr();
  p.values = vc.data_ptr();
  p.bitmaps = reinterpret_cast<const long long*>(bc.data_ptr());
  p.tile_offsets = tc.data_ptr<int>();
  p.group_offsets = gc.data_ptr<int>();
  p.y = y.data_ptr();
  TORCH_CHECK(T < (int64_t(1) << 31), op, ": too many tokens");
  p.T = static_cast<int>(T);
  p.N = static_cast<int>(n);
  p.K = static_cast<int>(kx);
  p.KG = static_cast<int>(KG);
  const int device = x.get_device();
  if (dt == at::kHalf) spinfer_tok<__half>(p, device, stream);
  else spinfer_tok<__nv_bfloat16>(p, device, stream);
  return y;
}

}  // namespace sparsekit::cuda
