// CPU implementations of the sparsekit ops: argument checks, the active-channel selection, the
// split of the output over threads (each thread owns a slice of the output: no atomics), and the
// choice of SIMD kernels (isa_*.cpp) for this CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace sparsekit::cpu {

// ------------------------------------------------------------------------------- ISA selection
static bool cpu_has(const std::string& isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && cpu_has("avx2");
  if (isa == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return isa == "base";
}

static const Kernels* kernels_for(const std::string& isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == "avx512") return &kernels_avx512();
  if (isa == "avx2") return &kernels_avx2();
#endif
  return &kernels_base();
}

static std::atomic<const Kernels*> g_kernels{nullptr};

// The best kernels this CPU runs, capped by env SPARSEKIT_CPU_ISA (avx512 > avx2 > base).
static const Kernels* choose() {
  std::string want = "avx512";
  if (const char* env = std::getenv("SPARSEKIT_CPU_ISA"); env != nullptr && *env) want = env;
  if (want != "avx2" && want != "base") want = "avx512";
  bool reached = false;
  for (const char* isa : {"avx512", "avx2", "base"}) {
    reached = reached || want == isa;
    if (reached && cpu_has(isa)) return kernels_for(isa);
  }
  return &kernels_base();
}

static const Kernels& kernels() {
  const Kernels* k = g_kernels.load();
  if (k == nullptr) {
    k = choose();
    g_kernels.store(k);
  }
  return *k;
}

std::string cpu_isa(const std::string& want) {
  if (!want.empty()) {
    TORCH_CHECK_VALUE(want == "avx512" || want == "avx2" || want == "base",
                      "unknown CPU ISA '", want, "' (use avx512, avx2 or base)");
    TORCH_CHECK_VALUE(cpu_has(want), "this CPU does not support the ", want, " kernels");
    g_kernels.store(kernels_for(want));
  }
  return kernels().name;
}

// ----------------------------------------------------------------------------------- helpers
static void check_float(const at::Tensor& t, const char* what) {
  const auto st = t.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, what,
                    " must be float32, float16 or bfloat16, got ", st);
}

static WType wtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return WType::BF16;
    case at::kHalf: return WType::F16;
    default: return WType::F32;
  }
}

static std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}

// The threshold as torch compares it: `x.abs() > threshold` casts the Python float to x's dtype.
template <class scalar_t>
static float cast_threshold(double threshold) {
  return static_cast<float>(static_cast<scalar_t>(threshold));
}

// Active channels (compacted) of a [T, K] input: xa[c*T + t] = float(masked x[t, idx[c]]).
struct Prepared {
  at::Tensor xa;   // float [nnz * T]
  at::Tensor idx;  // int32 [K] (first nnz used)
  int64_t nnz = 0;
  int64_t T = 0;
  Active active() const { return Active{xa.data_ptr<float>(), idx.data_ptr<int32_t>(), nnz, T}; }
};

// Flags the channels active in any token; if xs_out is defined, also writes the masked input.
static std::vector<uint8_t> active_flags(const at::Tensor& x2, double threshold, at::Tensor* xs_out) {
  const int64_t T = x2.size(0), K = x2.size(1);
  std::vector<uint8_t> flags(K, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x2.scalar_type(), "sparsekit_select", [&] {
    const scalar_t* x = x2.data_ptr<scalar_t>();
    scalar_t* xs = xs_out ? xs_out->data_ptr<scalar_t>() : nullptr;
    const float thr = cast_threshold<scalar_t>(threshold);
    // a decode step's input is tiny: one parallel region per op (the matvec's) is enough
    at::parallel_for(0, K, T * K >= (1 << 18) ? 2048 : K, [&](int64_t j0, int64_t j1) {
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = j0; j < j1; ++j) {
          const scalar_t v = x[t * K + j];
          const bool on = std::fabs(static_cast<float>(v)) > thr;
          flags[j] |= on;
          if (xs) xs[t * K + j] = on ? v : scalar_t(0);
        }
    });
  });
  return flags;
}

static Prepared compact(const at::Tensor& x2, const std::vector<uint8_t>& flags, double threshold, bool mask) {
  const int64_t T = x2.size(0), K = x2.size(1);
  Prepared p;
  p.T = T;
  p.idx = at::empty({K}, x2.options().dtype(at::kInt));
  int32_t* idx = p.idx.data_ptr<int32_t>();
  for (int64_t j = 0; j < K; ++j)
    if (flags[j]) idx[p.nnz++] = static_cast<int32_t>(j);
  for (int64_t c = p.nnz; c < K; ++c) idx[c] = static_cast<int32_t>(K);
  p.xa = at::empty({p.nnz * T}, x2.options().dtype(at::kFloat));
  float* xa = p.xa.data_ptr<float>();
  const int64_t nnz = p.nnz;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x2.scalar_type(), "sparsekit_compact", [&] {
    const scalar_t* x = x2.data_ptr<scalar_t>();
    const float thr = mask ? cast_threshold<scalar_t>(threshold) : -1.f;
    at::parallel_for(0, nnz, T * nnz >= (1 << 18) ? 1024 : nnz + 1, [&](int64_t c0, int64_t c1) {
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = c0; c < c1; ++c) {
          const float v = static_cast<float>(x[t * K + idx[c]]);
          xa[c * T + t] = (!mask || std::fabs(v) > thr) ? v : 0.f;
        }
    });
  });
  return p;
}

static at::Tensor as_2d(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least one dimension");
  return x.reshape({-1, x.size(-1)}).contiguous();
}

static Prepared prepare_threshold(const at::Tensor& x2, double threshold) {
  return compact(x2, active_flags(x2, threshold, nullptr), threshold, true);
}

static Prepared prepare_sel(const at::Tensor& xs2, const at::Tensor& idx_in, const at::Tensor& nnz_in) {
  const int64_t K = xs2.size(1);
  TORCH_CHECK_VALUE(nnz_in.numel() >= 1, "nnz must hold one count");
  const int64_t nnz = nnz_in.reshape({-1})[0].item<int64_t>();
  TORCH_CHECK_VALUE(nnz >= 0 && nnz <= idx_in.numel() && nnz <= K, "nnz = ", nnz, " is out of range for ",
                    idx_in.numel(), " indices and ", K, " channels");
  const at::Tensor ids = idx_in.reshape({-1}).slice(0, 0, nnz).to(at::kInt).contiguous();
  const int32_t* p = ids.data_ptr<int32_t>();
  for (int64_t c = 0; c < nnz; ++c) {
    TORCH_CHECK_VALUE(p[c] >= 0 && p[c] < K, "idx[", c, "] = ", p[c], " is not a channel of x (K = ", K, ")");
  }
  // keep idx as given (duplicates and order included): the sum runs over exactly these channels
  Prepared out;
  out.T = xs2.size(0);
  out.nnz = nnz;
  out.idx = ids;
  out.xa = at::empty({nnz * out.T}, xs2.options().dtype(at::kFloat));
  float* xa = out.xa.data_ptr<float>();
  const int64_t T = out.T;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs2.scalar_type(), "sparsekit_gather", [&] {
    const scalar_t* x = xs2.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < nnz; ++c) xa[c * T + t] = static_cast<float>(x[t * K + p[c]]);
  });
  return out;
}

// Runs fn(b0, b1) over [0, n) in chunks of `chunk` items that the threads take in turn, so a
// thread the OS delays (the CPU is shared) does not hold the others up. Each chunk owns its output.
template <class F>
static void dynamic_for(int64_t n, int64_t chunk, const F& fn) {
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), nchunks);
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next++; c < nchunks; c = next++) fn(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

static at::Tensor finish(const at::Tensor& y, const at::Tensor& x) {
  return y.to(x.scalar_type()).reshape(out_shape(x, y.size(1)));
}

// ---------------------------------------------------------------------------------------- teal
// Tokens at or above this count use a dense GEMM on the gathered active rows (prefill).
constexpr int64_t kGemmTokens = 32;

// Split the active channels (not the columns) between threads when column chunks would cut every
// weight row into short segments: rows of at most 4096 columns, one token, enough rows (2-core box,
// 11008->4096 at 50%: fp32 1.59x -> 1.74x, bf16 2.29x -> 2.58x over torch's dense matvec).
static bool split_channels(const Prepared& p, int64_t N) {
  return p.T == 1 && N <= 4096 && at::get_num_threads() > 1 && p.nnz >= 64 * at::get_num_threads();
}

static at::Tensor teal_run(const at::Tensor& x, const Prepared& p, const at::Tensor& w_t) {
  const int64_t N = w_t.size(1);
  if (p.nnz == 0 || p.T == 0) return at::zeros(out_shape(x, N), x.options());
  at::Tensor y;
  if (p.T >= kGemmTokens) {
    const at::Tensor xa = p.xa.view({p.nnz, p.T});
    const at::Tensor rows = w_t.index_select(0, p.idx.slice(0, 0, p.nnz).to(at::kLong)).to(at::kFloat);
    y = at::mm(xa.t(), rows);
  } else if (split_channels(p, N)) {
    // few output columns: each part takes a run of the active channels over all N columns (whole
    // rows of w_t stream best) into its own accumulators, then the parts are summed
    const int64_t threads = at::get_num_threads(), parts = 2 * threads;
    at::Tensor partial = at::empty({parts, p.T, N}, x.options().dtype(at::kFloat));
    const Kernels& k = kernels();
    const Active a = p.active();
    const int64_t per = (p.nnz + parts - 1) / parts;
    dynamic_for(parts, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c0 = std::min(p.nnz, b * per), c1 = std::min(p.nnz, (b + 1) * per);
        const Active sub{a.xa + c0 * p.T, a.idx + c0, c1 - c0, p.T};
        const TealArgs args{sub, w_t.data_ptr(), wtype_of(w_t), N, partial[b].data_ptr<float>()};
        k.teal(args, 0, N);
      }
    });
    y = partial.sum(0);
  } else {
    y = at::empty({p.T, N}, x.options().dtype(at::kFloat));
    const TealArgs args{p.active(), w_t.data_ptr(), wtype_of(w_t), N, y.data_ptr<float>()};
    const Kernels& k = kernels();
    // chunks of whole cache lines, two per thread: long contiguous runs of every weight row stream
    // best (measured: 8 or more chunks per thread were 15-40% slower), and two still let a thread
    // that the OS delays hand work to the other
    const int64_t units = (N + 63) / 64, threads = at::get_num_threads();
    const int64_t per = std::max<int64_t>(4, (units + 2 * threads - 1) / (2 * threads));
    dynamic_for(units, per, [&](int64_t b0, int64_t b1) { k.teal(args, b0 * 64, std::min(b1 * 64, N)); });
  }
  return finish(y, x);
}

static void check_teal(const at::Tensor& x, const at::Tensor& w_t) {
  check_float(x, "x");
  check_float(w_t, "w_t");
  TORCH_CHECK_VALUE(w_t.dim() == 2 && x.dim() >= 1 && x.size(-1) == w_t.size(0), "x has ", x.size(-1),
                    " channels but w_t has shape ", w_t.sizes(), " (expected [K, N])");
}

at::Tensor teal_matvec(const at::Tensor& x, const at::Tensor& w_t, double threshold) {
  check_teal(x, w_t);
  const at::Tensor x2 = as_2d(x);
  return teal_run(x, prepare_threshold(x2, threshold), w_t.contiguous());
}

at::Tensor teal_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz, const at::Tensor& w_t) {
  check_teal(xs, w_t);
  const at::Tensor x2 = as_2d(xs);
  return teal_run(xs, prepare_sel(x2, idx, nnz), w_t.contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select(const at::Tensor& x, double threshold) {
  check_float(x, "x");
  const at::Tensor x2 = as_2d(x);
  at::Tensor xs = at::empty_like(x2);
  const std::vector<uint8_t> flags = active_flags(x2, threshold, &xs);
  const int64_t K = x2.size(1);
  at::Tensor idx = at::empty({K}, x.options().dtype(at::kInt));
  int32_t* p = idx.data_ptr<int32_t>();
  int32_t n = 0;
  for (int64_t j = 0; j < K; ++j)
    if (flags[j]) p[n++] = static_cast<int32_t>(j);
  for (int64_t c = n; c < K; ++c) p[c] = static_cast<int32_t>(K);
  at::Tensor nnz = at::full({1}, n, x.options().dtype(at::kInt));
  return {xs.reshape(x.sizes()), idx, nnz};
}

// ---------------------------------------------------------------------------------------- spdp
// The spdp tensors of an [n, k] weight in R-row tiles: tile size, int32 types, sizes, and a last
// offset inside `values`. Returns the number of row tiles.
static int64_t check_packed(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                            int64_t k, int64_t tile_rows) {
  TORCH_CHECK_VALUE(tile_rows == 32 || tile_rows == 64 || tile_rows == 128, "tile_rows must be 32, 64 or 128, got ",
                    tile_rows);
  TORCH_CHECK_VALUE(n >= 0 && k >= 0, "n and k must be >= 0");
  const int64_t NT = (n + tile_rows - 1) / tile_rows;
  TORCH_CHECK_VALUE(bitmap.scalar_type() == at::kInt && bitmap.numel() == NT * k * (tile_rows / 32),
                    "bitmap must be int32 with ", NT * k * (tile_rows / 32), " words for n = ", n, ", K = ", k,
                    ", tile_rows = ", tile_rows, " (got ", bitmap.numel(), ")");
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kInt && offsets.numel() == NT * k + 1, "offsets must be int32 with ",
                    NT * k + 1, " entries (got ", offsets.numel(), ")");
  const at::Tensor off = offsets.reshape({-1}).contiguous();
  const int32_t* o = off.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(o[0] >= 0 && o[NT * k] <= values.numel(), "offsets point past the end of values");
  return NT;
}

static at::Tensor spdp_run(const at::Tensor& x, const Prepared& p, const at::Tensor& values, const at::Tensor& bitmap,
                           const at::Tensor& offsets, int64_t n, int64_t tile_rows) {
  const int64_t K = x.size(-1);
  check_float(values, "values");
  const int64_t NT = check_packed(values, bitmap, offsets, n, K, tile_rows);
  const at::Tensor off = offsets.reshape({-1}).contiguous();
  if (p.nnz == 0 || p.T == 0 || n == 0) return at::zeros(out_shape(x, n), x.options());
  at::Tensor y = at::empty({p.T, n}, x.options().dtype(at::kFloat));
  const at::Tensor vals = values.reshape({-1}).contiguous();
  const at::Tensor bm = bitmap.reshape({-1}).contiguous();
  const SpdpArgs args{p.active(), vals.data_ptr(), wtype_of(vals), bm.data_ptr<int32_t>(), off.data_ptr<int32_t>(),
                      n, K, tile_rows, y.data_ptr<float>()};
  const Kernels& k = kernels();
  dynamic_for(NT, std::max<int64_t>(1, NT / (8 * at::get_num_threads())), [&](int64_t r0, int64_t r1) {
    k.spdp(args, r0, r1);
  });
  return finish(y, x);
}

at::Tensor spdp_matvec(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                       const at::Tensor& offsets, int64_t n, int64_t tile_rows, double threshold) {
  check_float(x, "x");
  const at::Tensor x2 = as_2d(x);
  // tile_rows < 0 declares the fixed balanced layout (ops.cpp); this kernel reads offsets either way
  return spdp_run(x, prepare_threshold(x2, threshold), values, bitmap, offsets, n, std::abs(tile_rows));
}

at::Tensor spdp_matvec_sel(const at::Tensor& xs, const at::Tensor& idx, const at::Tensor& nnz,
                           const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                           int64_t tile_rows) {
  check_float(xs, "xs");
  const at::Tensor x2 = as_2d(xs);
  return spdp_run(xs, prepare_sel(x2, idx, nnz), values, bitmap, offsets, n, std::abs(tile_rows));
}

// The dense [n, k] weight of an spdp-packed one, bit for bit (values are copied as raw bytes).
at::Tensor spdp_decode(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& offsets, int64_t n,
                       int64_t k, int64_t tile_rows) {
  const int64_t W = tile_rows / 32, NT = check_packed(values, bitmap, offsets, n, k, tile_rows);
  const at::Tensor off = offsets.reshape({-1}).contiguous();
  const at::Tensor vals = values.reshape({-1}).contiguous();
  const at::Tensor bm = bitmap.reshape({-1}).contiguous();
  const int32_t* o = off.data_ptr<int32_t>();
  const uint32_t* b = reinterpret_cast<const uint32_t*>(bm.data_ptr<int32_t>());
  const int64_t nv = vals.numel();
  at::Tensor out = at::zeros({n, k}, values.options());
  if (n == 0 || k == 0) return out;
  const size_t es = static_cast<size_t>(vals.element_size());
  const char* src = static_cast<const char*>(vals.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  std::atomic<bool> bad{false};
  at::parallel_for(0, NT, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t pos = r * k + j;
        int64_t v = o[pos];
        for (int64_t w = 0; w < W; ++w) {
          uint32_t m = b[pos * W + w];
          if (v + __builtin_popcount(m) > nv) {  // a corrupt offset: never read past values
            bad = true;
            m = 0;
          }
          while (m != 0u) {
            const int64_t row = r * tile_rows + 32 * w + __builtin_ctz(m);
            m &= m - 1u;
            if (row < n) std::memcpy(dst + (row * k + j) * es, src + v * es, es);
            ++v;
          }
        }
      }
  });
  TORCH_CHECK_VALUE(!bad.load(), "offsets and bitmap point past the end of values");
  return out;
}

// ------------------------------------------------------------------------------------- spinfer
at::Tensor spinfer_matmul(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmaps,
                          const at::Tensor& tile_offsets, const at::Tensor& group_offsets, int64_t n, int64_t k) {
  check_float(x, "x");
  check_float(values, "values");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == k, "x has ", x.size(-1), " channels but the weight has k = ", k);
  TORCH_CHECK_VALUE(n >= 0 && k >= 0, "n and k must be >= 0");
  const int64_t Np = (n + 63) / 64 * 64, Kp = (k + 63) / 64 * 64, G = (Np / 64) * (Kp / 64);
  TORCH_CHECK_VALUE(bitmaps.scalar_type() == at::kLong && bitmaps.numel() == G * 64, "bitmaps must be int64 with ",
                    G * 64, " entries (got ", bitmaps.numel(), ")");
  TORCH_CHECK_VALUE(tile_offsets.scalar_type() == at::kInt && tile_offsets.numel() == G * 4,
                    "tile_offsets must be int32 with ", G * 4, " entries (got ", tile_offsets.numel(), ")");
  TORCH_CHECK_VALUE(group_offsets.scalar_type() == at::kInt && group_offsets.numel() == G + 1,
                    "group_offsets must be int32 with ", G + 1, " entries (got ", group_offsets.numel(), ")");
  const at::Tensor go = group_offsets.reshape({-1}).contiguous();
  TORCH_CHECK_VALUE(go.data_ptr<int32_t>()[G] <= values.numel(), "group_offsets point past the end of values");
  const at::Tensor x2 = as_2d(x);
  const int64_t T = x2.size(0);
  if (T == 0 || n == 0) return at::zeros(out_shape(x, n), x.options());
  at::Tensor xp = at::zeros({T, Kp}, x.options().dtype(at::kFloat));
  xp.slice(1, 0, k).copy_(x2);
  at::Tensor y = at::empty({T, n}, x.options().dtype(at::kFloat));
  const at::Tensor vals = values.reshape({-1}).contiguous();
  const at::Tensor bm = bitmaps.reshape({-1}).contiguous();
  const at::Tensor to = tile_offsets.reshape({-1}).contiguous();
  const SpinferArgs args{xp.data_ptr<float>(), T, vals.data_ptr(), wtype_of(vals), bm.data_ptr<int64_t>(),
                         to.data_ptr<int32_t>(), go.data_ptr<int32_t>(), n, Np, Kp, y.data_ptr<float>()};
  const Kernels& kk = kernels();
  dynamic_for(Np / 64, 1, [&](int64_t g0, int64_t g1) { kk.spinfer(args, g0, g1); });
  return finish(y, x);
}

// ------------------------------------------------------------------------------------ rowdelta
// Scalar: the layout's arithmetic (running column sums of the 4-bit steps), checked entry by entry.
at::Tensor rowdelta_matvec(const at::Tensor& x, const at::Tensor& values, const at::Tensor& deltas,
                           const at::Tensor& row_offsets, int64_t n, int64_t k) {
  check_float(x, "x");
  check_float(values, "values");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == k, "x has ", x.size(-1), " channels but the weight has k = ", k);
  TORCH_CHECK_VALUE(n >= 0 && k >= 0, "n and k must be >= 0");
  TORCH_CHECK_VALUE(deltas.scalar_type() == at::kInt && row_offsets.scalar_type() == at::kInt,
                    "deltas and row_offsets must be int32");
  TORCH_CHECK_VALUE(row_offsets.numel() == n + 1, "row_offsets must hold n + 1 = ", n + 1, " entries (got ",
                    row_offsets.numel(), ")");
  TORCH_CHECK_VALUE(values.numel() == deltas.numel() * 8, "values must hold 8 entries per deltas word");
  const at::Tensor ro = row_offsets.reshape({-1}).contiguous();
  const int32_t* off = ro.data_ptr<int32_t>();
  const int64_t nvec = deltas.numel();
  for (int64_t r = 0; r < n; ++r) {
    TORCH_CHECK_VALUE(off[r] >= 0 && off[r] <= off[r + 1] && off[r + 1] <= nvec,
                      "row_offsets must rise within the ", nvec, " vectors");
  }
  const at::Tensor x2 = as_2d(x).to(at::kFloat);
  const int64_t T = x2.size(0);
  if (T == 0 || n == 0) return at::zeros(out_shape(x, n), x.options());
  const at::Tensor vals = values.reshape({-1}).to(at::kFloat).contiguous();
  const at::Tensor dw = deltas.reshape({-1}).contiguous();
  const float* xv = x2.data_ptr<float>();
  const float* vv = vals.data_ptr<float>();
  const uint32_t* dv = reinterpret_cast<const uint32_t*>(dw.data_ptr<int32_t>());
  at::Tensor y = at::zeros({T, n}, x.options().dtype(at::kFloat));
  float* yv = y.data_ptr<float>();
  std::atomic<bool> bad{false};
  dynamic_for(n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t t = 0; t < T; ++t) {
        float acc = 0.f;
        int64_t col = 0;
        for (int64_t v = off[r]; v < off[r + 1]; ++v) {
          for (int j = 0; j < 8; ++j) {
            const int shift = j < 4 ? 8 * j : 8 * (j - 4) + 4;
            col += (dv[v] >> shift) & 15u;
            if (col >= k) {
              bad.store(true);
              break;
            }
            acc += vv[v * 8 + j] * xv[t * k + col];
          }
        }
        yv[t * n + r] = acc;
      }
    }
  });
  TORCH_CHECK_VALUE(!bad.load(), "rowdelta steps run past the last column");
  return finish(y, x);
}

}  // namespace sparsekit::cpu

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) {
  m.impl("select", &sparsekit::cpu::select);
  m.impl("teal_matvec", &sparsekit::cpu::teal_matvec);
  m.impl("teal_matvec_sel", &sparsekit::cpu::teal_matvec_sel);
  m.impl("spdp_matvec", &sparsekit::cpu::spdp_matvec);
  m.impl("spdp_matvec_sel", &sparsekit::cpu::spdp_matvec_sel);
  m.impl("spdp_decode", &sparsekit::cpu::spdp_decode);
  m.impl("spinfer_matmul", &sparsekit::cpu::spinfer_matmul);
  m.impl("rowdelta_matvec", &sparsekit::cpu::rowdelta_matvec);
}
