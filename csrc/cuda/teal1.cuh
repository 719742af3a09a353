// teal_matvec(_sel) for one token (decode): y[n] = sum over active k of x[k] * w_t[k, n].
//
// A block owns one output tile (lpr lanes x 16 bytes = lpr * VEC consecutive columns of w_t) and
// ALL input channels, so no reduction crosses blocks: no clusters, no workspace, no atomics. The
// tile is chosen narrow enough (64..512-byte row segments) that the tiles alone fill the GPU, and
// every block has the same work (the same active rows), so blocks finish together.
// Inside a block each warp owns a contiguous range of channels (fused op) or an interleaved share
// of select's list (the _sel op). A warp builds its own active list in shared memory (16-byte x
// loads, a warp scan, __syncwarp only: no block barrier before streaming): each entry is the
// element offset k * N of its w_t row (32 bits: K * N < 2^32) and x[k]. It then streams its active
// rows: lane group g takes list entries (b * rpw + g) * U + u, u < U, reads their offsets and x
// values with 16-byte shared loads, and issues its U 16-byte weight loads before using any.
// Lane groups reduce by shuffles, warps through shared memory in a fixed order (one barrier):
// results are bitwise deterministic, and bf16 costs what fp16 costs.
// Status (NOTES_cuda.md, iteration 2): opt-in, tune("teal1", 1). On the H200 it streams no faster
// than matvec.cuh: with one block per tile the blocks do not spread evenly over the 132 SMs (e.g.
// 172 tiles), and its lower fixed cost (no cluster) is lost in the streaming. It was marginally
// faster only at 4096 x 4096 with >= 50% of the channels inactive.
// No torch headers: compile with `nvcc -arch=sm_90 -Xptxas -v -c` to read the resource report.
#pragma once
#include "common.cuh"

namespace sk {

struct Teal1Params {
  const void* x;   // fused: x [K] (16-byte aligned, K % VEC == 0); _sel: xs [K]
  const int* idx;  // _sel: active channels idx[:nnz]
  const int* nnz;  // _sel: [1] on the device
  int idx_len;     // _sel: usable entries of idx (<= K)
  float thr;       // fused: keep |x| > thr
  int fused;       // 1: threshold x here; 0: use idx/nnz
  int K, N;
  int lpr;         // lanes per row segment: 4, 8, 16 or 32 (a power of two)
  int kw;          // fused: channels per warp (a multiple of VEC)
  int xv;          // fused: 16-byte x vectors per lane per pass (1..XVMAX)
  int cap;         // list entries per warp (a multiple of 32, >= min(kw, xv * 32 * VEC))
  void* y;         // [N], x's dtype
  const void* w;   // w_t [K, N], 16-byte aligned, N % VEC == 0, K * N < 2^32
};

template <typename T>
struct T1Cfg {
  static constexpr int VEC = Vec<T>::N;
  static constexpr int U = 8;                        // 16-byte weight loads in flight per lane (a multiple of 4)
  static constexpr int XVMAX = 1024 / (32 * VEC);    // fused: at most 1024 channels per warp pass
  static constexpr int SR = 16;                      // _sel: list entries per lane per gather round
  static constexpr int MAX_THREADS = 1024;
  // shared memory (bytes) for nw warps with `cap` entries each and `tile_out` columns
  static constexpr size_t smem(int nw, int cap, int tile_out) {
    return size_t(nw) * cap * 8 + size_t(nw) * tile_out * 4;
  }
};

template <typename T>
__global__ void __launch_bounds__(T1Cfg<T>::MAX_THREADS, 1) teal1_kernel(const Teal1Params p) {
  using C = T1Cfg<T>;
  constexpr int VEC = C::VEC, U = C::U;
  extern __shared__ __align__(16) unsigned char smem[];
  grid_dependency_wait();  // launched with programmatic stream serialization: inputs are ready after this
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int cap = p.cap;
  unsigned* s_j = reinterpret_cast<unsigned*>(smem) + warp * cap;       // [nw][cap] row offset k * N
  float* s_x = reinterpret_cast<float*>(smem) + (nw + warp) * cap;       // [nw][cap] x value
  float* s_red = reinterpret_cast<float*>(smem) + 2 * nw * cap;          // [nw][tile_out]
  const int K = p.K, N = p.N;
  const int lpr = p.lpr, rpw = 32 / lpr, g = lane / lpr, li = lane & (lpr - 1);
  const int tile_out = lpr * VEC;
  const int col = blockIdx.x * tile_out + li * VEC;
  const bool colok = col < N;
  const T* wcol = static_cast<const T*>(p.w) + (colok ? col : 0);
  const T* x = static_cast<const T*>(p.x);

  float acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc[v] = 0.f;

  // stream this warp's list entries [0, cnt): lane group g takes entries (b * rpw + g) * U + u.
  // Entries at or past cnt (stale shared memory, inside the warp's region: cap % 32 == 0) are
  // read but never used.
  auto stream = [&](int cnt) {
    for (int e0 = g * U; e0 < cnt; e0 += rpw * U) {
      unsigned off[U];
#pragma unroll
      for (int u = 0; u < U; u += 4) {
        const uint4 q = *reinterpret_cast<const uint4*>(s_j + e0 + u);
        off[u] = q.x; off[u + 1] = q.y; off[u + 2] = q.z; off[u + 3] = q.w;
      }
      uint4 wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (colok && e0 + u < cnt) wv[u] = ld_stream16(wcol + off[u]);
        else wv[u] = make_uint4(0u, 0u, 0u, 0u);
      }
      float xe[U];
#pragma unroll
      for (int u = 0; u < U; u += 4) {
        const float4 q = *reinterpret_cast<const float4*>(s_x + e0 + u);
        xe[u] = q.x; xe[u + 1] = q.y; xe[u + 2] = q.z; xe[u + 3] = q.w;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (e0 + u < cnt) {
          float f[VEC];
          unpack16<T>(wv[u], f);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[v] = fmaf(xe[u], f[v], acc[v]);
        }
      }
    }
  };

  if (p.fused) {
    // channels [r0, r1), in passes of xv * 32 * VEC: lane owns vectors i * 32 + lane of the pass
    const int r0 = min(K, warp * p.kw), r1 = min(K, r0 + p.kw);
    const int pass = p.xv * 32 * VEC;
    for (int c0 = r0; c0 < r1; c0 += pass) {
      uint4 xr[C::XVMAX];
#pragma unroll
      for (int i = 0; i < C::XVMAX; ++i) {
        const int k = c0 + (i * 32 + lane) * VEC;
        if (i < p.xv && k < r1) xr[i] = __ldg(reinterpret_cast<const uint4*>(x + k));
        else xr[i] = make_uint4(0u, 0u, 0u, 0u);
      }
      __syncwarp();  // the previous pass's list is consumed
      int base = 0;
#pragma unroll
      for (int i = 0; i < C::XVMAX; ++i) {
        if (i < p.xv) {  // warp-uniform
          const int k = c0 + (i * 32 + lane) * VEC;
          float f[VEC];
          unpack16<T>(xr[i], f);
          unsigned bits = 0;
#pragma unroll
          for (int v = 0; v < VEC; ++v) bits |= (k < r1 && fabsf(f[v]) > p.thr) ? (1u << v) : 0u;
          const int c = __popc(bits);
          int incl = c;
#pragma unroll
          for (int o = 1; o < 32; o <<= 1) {
            const int n = __shfl_up_sync(FULL, incl, o);
            if (lane >= o) incl += n;
          }
          int pos = base + incl - c;
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            if (bits & (1u << v)) {
              s_j[pos] = static_cast<unsigned>(k + v) * static_cast<unsigned>(N);
              s_x[pos] = f[v];
              ++pos;
            }
          }
          base += __shfl_sync(FULL, incl, 31);
        }
      }
      __syncwarp();
      stream(base);
    }
  } else {
    // entries e = 32 * (warp + nw * j) + lane of idx[:cnt], j = 0, 1, ...; a pass holds cap / 32
    // values of j (list row j - jb), gathered SR at a time. The first round's idx loads do not
    // wait for nnz, so nnz, idx and then xs cost two round trips, not three.
    const int nnz_raw = __ldg(p.nnz);
    const int jp = cap / 32;
    // list rows js .. js + SR - 1 of the pass starting at jb: idx loads (bounded by idx_len, not by
    // nnz), then every x gather in flight at once (no branch around a load; invalid -> x[0], unused)
    auto sel_round = [&](int jb, int js, int cnt) {
      int jv[C::SR];
#pragma unroll
      for (int s = 0; s < C::SR; ++s) {
        const int e = 32 * (warp + nw * (jb + js + s)) + lane;
        jv[s] = (js + s < jp && e < p.idx_len) ? __ldg(p.idx + e) : -1;
      }
      T xr[C::SR];
#pragma unroll
      for (int s = 0; s < C::SR; ++s) {
        const int e = 32 * (warp + nw * (jb + js + s)) + lane;
        const bool ok = e < cnt && jv[s] >= 0 && jv[s] < K;
        if (!ok) jv[s] = -1;
        xr[s] = __ldg(x + (ok ? jv[s] : 0));
      }
#pragma unroll
      for (int s = 0; s < C::SR; ++s) {
        if (js + s < jp) {
          const bool ok = jv[s] >= 0;
          s_j[(js + s) * 32 + lane] = ok ? static_cast<unsigned>(jv[s]) * static_cast<unsigned>(N) : 0u;
          s_x[(js + s) * 32 + lane] = ok ? to_f<T>(xr[s]) : 0.f;
        }
      }
    };
    const int cnt = min(max(nnz_raw, 0), p.idx_len);
    sel_round(0, 0, cnt);  // first: its idx loads are in flight together with nnz
    for (int jb = 0;; jb += jp) {
      for (int js = jb == 0 ? C::SR : 0; js < jp; js += C::SR) {
        if (32 * (warp + nw * (jb + js)) >= cnt) break;
        sel_round(jb, js, cnt);
      }
      // valid entries of this pass form a prefix of its list
      int cw = 0;
      for (int jj = 0; jj < jp; ++jj) cw += min(32, max(0, cnt - 32 * (warp + nw * (jb + jj))));
      __syncwarp();
      stream(cw);
      if (32 * (warp + nw * (jb + jp)) >= cnt) break;
      __syncwarp();  // the list is consumed before the next pass overwrites it
    }
  }

  // ---- reduce: lane groups (shuffles), then warps (shared memory, fixed order) -----------------
  for (int o = lpr; o < 32; o <<= 1) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] += __shfl_xor_sync(FULL, acc[v], o);
  }
  if (g == 0) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) s_red[warp * tile_out + li * VEC + v] = acc[v];
  }
  __syncthreads();
  T* y = static_cast<T*>(p.y);
  for (int o = threadIdx.x; o < tile_out; o += blockDim.x) {
    const int n = blockIdx.x * tile_out + o;
    if (n < N) {
      float s = 0.f;
      for (int q = 0; q < nw; ++q) s += s_red[q * tile_out + o];
      y[n] = from_f<T>(s);
    }
  }
}

// ---- host side (no torch) -----------------------------------------------------------------------
// Launch geometry for one call: tiles (grid), threads (block), and the Teal1Params layout fields.
struct Teal1Plan {
  int tiles = 0, threads = 0;
  size_t smem = 0;
};

// sms: multiprocessors; lpr/threads: 0 = automatic. Fills p.lpr, p.kw, p.xv, p.cap.
template <typename T>
inline Teal1Plan teal1_plan(Teal1Params& p, int sms, int lpr, int threads) {
  using C = T1Cfg<T>;
  constexpr int VEC = C::VEC;
  auto tiles_of = [&](int l) { return (p.N + l * VEC - 1) / (l * VEC); };
  if (lpr <= 0) {  // the widest row segment whose tiles still cover ~all multiprocessors
    lpr = 4;
    for (int l = 32; l >= 4; l >>= 1) {
      if (10 * tiles_of(l) >= 9 * sms) {
        lpr = l;
        break;
      }
    }
  }
  Teal1Plan plan;
  plan.tiles = tiles_of(lpr);
  // one 1024-thread block per SM when there are no more tiles than SMs, else two 512-thread blocks
  if (threads <= 0) threads = plan.tiles <= sms ? 1024 : 512;
  plan.threads = threads;
  const int nw = threads / 32;
  p.lpr = lpr;
  const int per = (p.K + nw - 1) / nw;
  p.kw = (per + VEC - 1) / VEC * VEC;
  // shared memory budget per block: the share of ~200 KB that one of (1024 / threads) blocks gets
  const size_t budget = size_t(200) * 1024 * threads / 1024;
  auto cap_of = [&](int xv) {
    const int ch = std::min(xv * 32 * VEC, std::max(p.kw, 1));
    return (ch + 31) / 32 * 32;
  };
  int xv = std::min(C::XVMAX, std::max(1, (p.kw + 32 * VEC - 1) / (32 * VEC)));
  while (xv > 1 && C::smem(nw, cap_of(xv), lpr * VEC) > budget) --xv;
  p.xv = xv;
  p.cap = cap_of(xv);
  plan.smem = C::smem(nw, p.cap, lpr * VEC);
  return plan;
}

template <typename T>
inline cudaError_t teal1_launch(const Teal1Params& p, const Teal1Plan& plan, int device, cudaStream_t stream,
                                bool pdl) {
  static int set_bytes[64] = {0};
  if (device < 0 || device >= 64) return cudaErrorInvalidDevice;
  if (static_cast<size_t>(set_bytes[device]) < plan.smem) {
    const cudaError_t e =
        cudaFuncSetAttribute(teal1_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem));
    if (e != cudaSuccess) return e;
    set_bytes[device] = static_cast<int>(plan.smem);
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(plan.tiles), 1, 1);
  cfg.blockDim = dim3(static_cast<unsigned>(plan.threads), 1, 1);
  cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  cfg.numAttrs = launch_attrs(attr, 1, pdl);
  cfg.attrs = attr;
  return cudaLaunchKernelEx(&cfg, teal1_kernel<T>, p);
}

}  // namespace sk
