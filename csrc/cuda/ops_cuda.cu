// CUDA registrations of every sparsekit op (schemas: csrc/ops.cpp), the select op, and the
// `sparsekit_cuda::tune` knob used by benchmarks and tests.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>

#include "ops_cuda.h"
#include "select.cuh"

namespace sparsekit::cuda {

static at::Tensor& trace_buffer() {
  static at::Tensor buf;
  return buf;
}

unsigned long long* trace_slots(int64_t blocks, int device) {
  const at::Tensor& buf = trace_buffer();
  if (!buf.defined()) return nullptr;
  TORCH_CHECK(buf.device().index() == device, "sparsekit_cuda.trace: the buffer is on cuda:", buf.device().index(),
              " but the launch runs on cuda:", device);
  TORCH_CHECK(buf.numel() >= blocks * 8, "sparsekit_cuda.trace: the buffer holds ", buf.numel() / 8,
              " block records but the launch has ", blocks, " blocks");
  return reinterpret_cast<unsigned long long*>(buf.data_ptr<int64_t>());
}

// Set (a contiguous int64 CUDA tensor of [blocks, 8]) or clear (None) the trace buffer.
static void set_trace(const std::optional<at::Tensor>& buf) {
  if (!buf.has_value() || !buf->defined()) {
    trace_buffer() = at::Tensor();
    return;
  }
  TORCH_CHECK(buf->is_cuda() && buf->scalar_type() == at::kLong && buf->is_contiguous(),
              "sparsekit_cuda.trace: the buffer must be a contiguous int64 CUDA tensor");
  trace_buffer() = *buf;
}

Tuning& tuning() {
  static Tuning t;
  return t;
}

int sm_count(int device) { return at::cuda::getDeviceProperties(device)->multiProcessorCount; }
int cc_major(int device) { return at::cuda::getDeviceProperties(device)->major; }

int choose_split(int device, int base, int blocks_per_sm, int max_slices) {
  int s;
  if (cc_major(device) < 9) {
    s = 1;
  } else if (tuning().split > 0) {
    s = std::min(tuning().split, 8);
  } else {
    s = (sm_count(device) * std::max(blocks_per_sm, 1)) / std::max(base, 1);
    s = std::min(std::max(s, 1), 8);
  }
  s = std::max(1, std::min(s, max_slices));
  tuning().last_split = s;
  return s;
}

float cast_threshold(double t, at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return static_cast<float>(static_cast<c10::Half>(static_cast<float>(t)));
    case at::kBFloat16: return static_cast<float>(static_cast<c10::BFloat16>(static_cast<float>(t)));
    default: return static_cast<float>(t);
  }
}

template <typename T>
static void select_launch(const at::Tensor& xc, at::Tensor& xs, at::Tensor& idx, at::Tensor& nnz, int64_t T_,
                          int64_t K, float thr) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const T* x = reinterpret_cast<const T*>(xc.data_ptr());
  T* s = reinterpret_cast<T*>(xs.data_ptr());
  if (T_ * K <= 64 * 1024 || T_ <= 4) {
    const bool vec = (K % 8 == 0) && (reinterpret_cast<uintptr_t>(x) % 16 == 0) &&
                     (reinterpret_cast<uintptr_t>(s) % 16 == 0);
    sk::select_small_kernel<T><<<1, sk::SEL_THREADS, 0, stream>>>(x, s, idx.data_ptr<int>(), nnz.data_ptr<int>(),
                                                                  static_cast<int>(T_), static_cast<int>(K), thr,
                                                                  vec ? 1 : 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t nblk = (T_ + sk::SEL_TOK_BLOCK - 1) / sk::SEL_TOK_BLOCK;
  auto flags = at::empty({nblk, K}, xc.options().dtype(at::kByte));
  dim3 grid(static_cast<unsigned>((K + 255) / 256), static_cast<unsigned>(nblk));
  sk::select_mask_kernel<T><<<grid, 256, 0, stream>>>(x, s, flags.data_ptr<uint8_t>(), static_cast<int>(T_),
                                                      static_cast<int>(K), thr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sk::select_compact_kernel<<<1, sk::SEL_THREADS, 0, stream>>>(flags.data_ptr<uint8_t>(), static_cast<int>(nblk),
                                                               idx.data_ptr<int>(), nnz.data_ptr<int>(),
                                                               static_cast<int>(K));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select(const at::Tensor& x, double threshold) {
  TORCH_CHECK(x.is_cuda(), "select: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() >= 1, "select: x must have at least one dimension");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat,
              "select: x must be float16, bfloat16 or float32");
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t K = xc.size(-1);
  const int64_t T_ = K > 0 ? xc.numel() / K : 0;
  TORCH_CHECK(K < (int64_t(1) << 31) && T_ * K < (int64_t(1) << 40), "select: x is too large");
  auto xs = at::empty_like(xc);
  auto idx = at::empty({K}, xc.options().dtype(at::kInt));
  auto nnz = at::empty({1}, xc.options().dtype(at::kInt));
  if (K == 0 || T_ == 0) {
    nnz.zero_();
    return {xs, idx, nnz};
  }
  const float thr = cast_threshold(threshold, dt);
  if (dt == at::kHalf) select_launch<__half>(xc, xs, idx, nnz, T_, K, thr);
  else if (dt == at::kBFloat16) select_launch<__nv_bfloat16>(xc, xs, idx, nnz, T_, K, thr);
  else select_launch<float>(xc, xs, idx, nnz, T_, K, thr);
  return {xs, idx, nnz};
}

// Benchmarks and tests only: set (value >= 0) or read (value < 0) a knob; returns the old value.
static int64_t tune(const std::string& key, int64_t value) {
  if (key == "clusters") {  // read-only: resident clusters of `value` blocks (fp16 one-token teal kernel)
    TORCH_CHECK(value >= 2 && value <= 8, "sparsekit_cuda.tune: clusters takes a cluster size 2..8");
    return teal_max_clusters(c10::cuda::current_device(), static_cast<int>(value));
  }
  int* slot = nullptr;
  if (key == "split") slot = &tuning().split;
  else if (key == "teal_lpr") slot = &tuning().teal_lpr;
  else if (key == "pipe") slot = &tuning().pipe;
  else if (key == "pdl") slot = &tuning().pdl;
  else if (key == "spinfer_warps") slot = &tuning().spinfer_warps;
  else if (key == "spdp_deep") slot = &tuning().spdp_deep;
  else if (key == "spdp_nib") slot = &tuning().spdp_nib;
  else if (key == "spdp_stage") slot = &tuning().spdp_stage;
  else if (key == "spdp_bal") slot = &tuning().spdp_bal;
  else if (key == "spdp_mm") slot = &tuning().spdp_mm;
  else if (key == "spdp_mm_rows") slot = &tuning().spdp_mm_rows;
  else if (key == "spdp_mm_strips") slot = &tuning().spdp_mm_strips;
  else if (key == "spdp_mm_tn") slot = &tuning().spdp_mm_tn;
  else if (key == "teal1") slot = &tuning().teal1;
  else if (key == "teal1_threads") slot = &tuning().teal1_threads;
  else if (key == "teal1_lpr") slot = &tuning().teal1_lpr;
  else if (key == "l2pf") slot = &tuning().l2pf;
  else if (key == "last_split") slot = &tuning().last_split;
  else if (key == "last_teal1") slot = &tuning().last_teal1;
  else if (key == "last_spdp_mm") slot = &tuning().last_spdp_mm;
  else if (key == "last_spdp_fix") slot = &tuning().last_spdp_fix;
  TORCH_CHECK(slot != nullptr, "sparsekit_cuda.tune: unknown key '", key,
              "' (split, teal_lpr, pipe, pdl, spdp_deep, spdp_nib, spdp_stage, spdp_bal, spdp_mm, spdp_mm_rows, spdp_mm_strips, spdp_mm_tn, spinfer_warps, teal1, teal1_threads, teal1_lpr, l2pf, last_split, last_teal1, last_spdp_mm, last_spdp_fix)");
  const int old = *slot;
  if (value >= 0) {
    TORCH_CHECK(key != "last_split" && key != "last_teal1" && key != "last_spdp_mm" && key != "last_spdp_fix",
                "sparsekit_cuda.tune: ", key,
                " is read-only");
    TORCH_CHECK(key != "teal1" || value <= 1, "sparsekit_cuda.tune: teal1 must be 0 or 1");
    TORCH_CHECK(key != "teal1_threads" || value == 0 || value == 256 || value == 512 || value == 1024,
                "sparsekit_cuda.tune: teal1_threads must be 0, 256, 512 or 1024");
    TORCH_CHECK(key != "teal1_lpr" || value == 0 || value == 4 || value == 8 || value == 16 || value == 32,
                "sparsekit_cuda.tune: teal1_lpr must be 0, 4, 8, 16 or 32");
    TORCH_CHECK(key != "teal_lpr" || value == 0 || value == 8 || value == 16 || value == 32,
                "sparsekit_cuda.tune: teal_lpr must be 0, 8, 16 or 32");
    TORCH_CHECK(key != "split" || value <= 8, "sparsekit_cuda.tune: split must be 0..8");
    TORCH_CHECK(key != "l2pf" || value <= 2048, "sparsekit_cuda.tune: l2pf must be 0..2048");
    TORCH_CHECK(key != "spinfer_warps" || value == 4 || value == 8, "sparsekit_cuda.tune: spinfer_warps must be 4 or 8");
    TORCH_CHECK(key != "spdp_mm" || value <= 2, "sparsekit_cuda.tune: spdp_mm must be 0, 1 or 2");
    TORCH_CHECK(key != "spdp_mm_rows" || value == 8 || value == 16, "sparsekit_cuda.tune: spdp_mm_rows must be 8 or 16");
    TORCH_CHECK(key != "spdp_mm_strips" || value <= 2, "sparsekit_cuda.tune: spdp_mm_strips must be 0, 1 or 2");
    TORCH_CHECK(key != "spdp_mm_tn" || value == 0 || value == 8 || value == 16 || value == 32 || value == 64,
                "sparsekit_cuda.tune: spdp_mm_tn must be 0, 8, 16, 32 or 64");
    TORCH_CHECK(key != "spdp_deep" || value <= 2, "sparsekit_cuda.tune: spdp_deep must be 0, 1 or 2");
    TORCH_CHECK(key != "spdp_nib" || value <= 2, "sparsekit_cuda.tune: spdp_nib must be 0, 1 or 2");
    TORCH_CHECK(key != "spdp_stage" || value <= 2, "sparsekit_cuda.tune: spdp_stage must be 0, 1 or 2");
    TORCH_CHECK(key != "spdp_bal" || value <= 2, "sparsekit_cuda.tune: spdp_bal must be 0, 1 or 2");
    TORCH_CHECK((key != "pipe" && key != "pdl") || value <= 1, "sparsekit_cuda.tune: ", key, " must be 0 or 1");
    *slot = static_cast<int>(value);
  }
  return old;
}

}  // namespace sparsekit::cuda

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("select", &sparsekit::cuda::select);
  m.impl("teal_matvec", &sparsekit::cuda::teal_matvec);
  m.impl("teal_matvec_sel", &sparsekit::cuda::teal_matvec_sel);
  m.impl("teal_matvec_rel", &sparsekit::cuda::teal_matvec_rel);
  m.impl("spdp_matvec_rel", &sparsekit::cuda::spdp_matvec_rel);
  m.impl("teal_matvec_glu", &sparsekit::cuda::teal_matvec_glu);
  m.impl("spdp_matvec_glu", &sparsekit::cuda::spdp_matvec_glu);
  m.impl("spdp_matvec", &sparsekit::cuda::spdp_matvec);
  m.impl("spdp_matvec_sel", &sparsekit::cuda::spdp_matvec_sel);
  m.impl("spdp_decode", &sparsekit::cuda::spdp_decode);
  m.impl("spinfer_matmul", &sparsekit::cuda::spinfer_matmul);
  m.impl("rowdelta_matvec", &sparsekit::cuda::rowdelta_matvec);
}

TORCH_LIBRARY(sparsekit_cuda, m) {
  m.def("tune(str key, int value=-1) -> int", &sparsekit::cuda::tune);
  m.def("trace(Tensor? buf) -> ()", &sparsekit::cuda::set_trace);
}
