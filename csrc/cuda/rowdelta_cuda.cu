// rowdelta_matvec on CUDA (kernel: rowdelta.cuh). x and values share one dtype (fp16, bf16, fp32);
// the block count fills the resident slots once (blocks then walk rows), x is one fp32 copy in
// shared memory per block. Every token reads the weight once: the path for one token per call.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "ops_cuda.h"
#include "rowdelta.cuh"

namespace sparsekit::cuda {

namespace {

constexpr int kRdWarps = 8;

// The most dynamic shared memory a block may opt into, per device (read once).
int max_smem_optin(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 48 * 1024;
  if (cache[device] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess || v <= 0) {
      (void)cudaGetLastError();
      v = 48 * 1024;
    }
    cache[device] = v;
  }
  return cache[device];
}

template <typename T>
void rowdelta_go(const sk::RowDeltaParams& p, int T_, int device, cudaStream_t stream) {
  auto kernel = sk::rowdelta_kernel<T, kRdWarps>;
  const size_t smem = static_cast<size_t>(p.K) * sizeof(float);
  const cudaError_t opt = sk::allow_smem_cached<sk::rowdelta_kernel<T, kRdWarps>>(device, max_smem_optin(device));
  C10_CUDA_CHECK(opt);
  // resident blocks per SM depend on K (the x copy): cached per (device, smem)
  static std::mutex mu;
  static std::map<std::pair<int, size_t>, int> bps_cache;
  int bps = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = bps_cache.find({device, smem});
    if (it != bps_cache.end()) {
      bps = it->second;
    } else {
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, kernel, kRdWarps * 32, smem) != cudaSuccess || bps < 1) {
        (void)cudaGetLastError();
        bps = 1;
      }
      bps_cache[{device, smem}] = bps;
    }
  }
  const int need = (p.N + kRdWarps - 1) / kRdWarps;
  const int blocks = std::max(1, std::min(need, sm_count(device) * bps / std::max(1, T_)));
  const bool pdl = tuning().pdl != 0 && cc_major(device) >= 9;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(T_), 1);
  const cudaError_t err = sk::launch_sliced(kernel, p, grid, kRdWarps * 32, smem, 1, stream, pdl);
  C10_CUDA_CHECK(err);
}

}  // namespace

at::Tensor rowdelta_matvec(const at::Tensor& x, const at::Tensor& values, const at::Tensor& deltas,
                           const at::Tensor& row_offsets, int64_t n, int64_t k) {
  const char* op = "rowdelta_matvec";
  check_x(x, op);
  const auto dt = x.scalar_type();
  TORCH_CHECK(values.scalar_type() == dt, op, ": values must have x's dtype");
  TORCH_CHECK(x.size(-1) == k, op, ": x has ", x.size(-1), " channels but the weight has ", k, " inputs");
  TORCH_CHECK(n >= 0 && k >= 0 && n < (int64_t(1) << 31), op, ": bad shape");
  for (const at::Tensor* t : {&values, &deltas, &row_offsets})
    TORCH_CHECK(t->is_cuda() && t->device() == x.device(), op, ": the packed tensors must be on x's device");
  TORCH_CHECK(deltas.scalar_type() == at::kInt && row_offsets.scalar_type() == at::kInt, op,
              ": deltas and row_offsets must be int32");
  TORCH_CHECK(row_offsets.numel() == n + 1, op, ": row_offsets must hold n + 1 entries");
  TORCH_CHECK(values.numel() == deltas.numel() * 8, op, ": values must hold 8 entries per deltas word");
  const int device = x.get_device();
  TORCH_CHECK(k * static_cast<int64_t>(sizeof(float)) <= max_smem_optin(device), op, ": k = ", k,
              " is too large for one fp32 copy of x in shared memory");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = k > 0 ? x.numel() / k : 0;
  auto y = at::empty(out_shape(x, n), x.options());
  if (T == 0 || n == 0) return y;
  if (k == 0) return y.zero_();
  TORCH_CHECK(T <= 65535, op, ": at most 65535 tokens per call");
  const at::Tensor xc = x.contiguous();
  at::Tensor vc = values.contiguous();
  if (reinterpret_cast<uintptr_t>(vc.data_ptr()) % 16 != 0) vc = vc.clone(at::MemoryFormat::Contiguous);
  const at::Tensor dc = deltas.contiguous(), rc = row_offsets.contiguous();
  sk::RowDeltaParams p{};
  p.x = xc.data_ptr();
  p.values = vc.data_ptr();
  p.deltas = reinterpret_cast<const uint32_t*>(dc.data_ptr<int>());
  p.row_offsets = rc.data_ptr<int>();
  p.y = y.data_ptr();
  p.N = static_cast<int>(n);
  p.K = static_cast<int>(k);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (dt == at::kHalf) rowdelta_go<__half>(p, static_cast<int>(T), device, stream);
  else if (dt == at::kBFloat16) rowdelta_go<__nv_bfloat16>(p, static_cast<int>(T), device, stream);
  else rowdelta_go<float>(p, static_cast<int>(T), device, stream);
  return y;
}

}  // namespace sparsekit::cuda
