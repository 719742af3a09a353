// Shared device helpers for the sparsekit CUDA kernels. No torch headers here, so every kernel
// header can be compiled with plain `nvcc -arch=sm_90 -Xptxas -v -c` to read registers/spills.
#pragma once
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define SK_HAS_CLUSTER 1
#include <cooperative_groups.h>
#else
#define SK_HAS_CLUSTER 0
#endif

namespace sk {

constexpr unsigned FULL = 0xffffffffu;

// ---- scalar conversions --------------------------------------------------------------------
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The SwiGLU product as torch computes `F.silu(g) * u` in T: silu in float32 (x / (1 + exp(-x)),
// ATen's formula), rounded to T, times u in float32, rounded to T (identity roundings for float).
template <typename T> __device__ __forceinline__ float silu_mul(float g, float u) {
  const float a = to_f<T>(from_f<T>(g / (1.0f + expf(-g))));
  return to_f<T>(from_f<T>(a * u));
}

// 16-bit payload (as stored in a 32-bit register, low half) -> float.
template <typename T> __device__ __forceinline__ float bits16_to_f(uint32_t b);
template <> __device__ __forceinline__ float bits16_to_f<__half>(uint32_t b) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
}
template <> __device__ __forceinline__ float bits16_to_f<__nv_bfloat16>(uint32_t b) { return __uint_as_float(b << 16); }

// Elements of T in one 16-byte vector.
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

// Unpack a 16-byte vector into floats.
template <typename T> __device__ __forceinline__ void unpack16(const uint4& u, float (&f)[Vec<T>::N]);
template <> __device__ __forceinline__ void unpack16<float>(const uint4& u, float (&f)[4]) {
  f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y); f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
}
template <> __device__ __forceinline__ void unpack16<__half>(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
    float2 v = __half22float2(h);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
template <> __device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// ---- loads -----------------------------------------------------------------------------------
// Streaming 16-byte load of data read once (weights): read-only path, no L1 allocation, and ask
// L2 to fetch the whole 256-byte block (our row segments are >= 256 contiguous bytes).
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}
// Streaming 16-bit load (spdp values), no L1 allocation.
__device__ __forceinline__ uint32_t ld_stream_u16(const void* p) {
  unsigned short r;
  asm("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t ld_stream_u32(const void* p) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// ---- cp.async (sm_80+) -----------------------------------------------------------------------
// 16-byte global -> shared copy (shared-memory address `smem_addr`) of the first `nbytes` (0..16)
// source bytes; the rest is zero-filled.
__device__ __forceinline__ void cp_async16_bytes(unsigned smem_addr, const void* gsrc, int nbytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gsrc), "r"(nbytes) : "memory");
}
// 16-byte global -> shared copy, zero-filled when !valid.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gsrc, bool valid) {
  cp_async16_bytes(static_cast<unsigned>(__cvta_generic_to_shared(smem_dst)), gsrc, valid ? 16 : 0);
}
// Streaming variant for weights read once: L2 fetches the whole 256-byte block.
__device__ __forceinline__ void cp_async16_stream(void* smem_dst, const void* gsrc) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(d), "l"(gsrc) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 16-bit shared-memory load at shared-window address `addr` where `pred` != 0, else 0 (predicated:
// no branch, so a warp keeps every load in flight).
__device__ __forceinline__ uint32_t lds_u16_if(uint32_t addr, uint32_t pred) {
  uint32_t v = 0u;
  asm volatile("{\n .reg .pred q;\n setp.ne.b32 q, %2, 0;\n @q ld.shared.u16 %0, [%1];\n}" : "+r"(v) : "r"(addr), "r"(pred));
  return v;
}

// The bit count of each nibble of m (the 2:4-over-rows check of the balanced spdp paths).
__device__ __forceinline__ uint32_t nibble_counts(uint32_t m) {
  const uint32_t c = m - ((m >> 1) & 0x55555555u);
  return (c & 0x33333333u) + ((c >> 2) & 0x33333333u);
}

// ---- tensor cores (sm_80+): mma.sync m16n8k16 with fp32 accumulation, ldmatrix ----------------
// c += a (16x16, row-major fragment) * b (16x8, column-major fragment); T = __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (sizeof(T) == 2 && std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// ---- L2 prefetch -------------------------------------------------------------------------------
// Hint: bring the 128-byte line holding `ptr` into L2 (no register, no wait, no fault semantics).
__device__ __forceinline__ void prefetch_l2(const void* ptr) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(ptr));
}

// ---- block timelines (diagnostics: sparsekit_cuda::trace) -------------------------------------
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned sm_id() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
// Slots of one block's record: global ns at entry, SM clock at entry, at the first list, after the
// weight stream, before the cluster reduction, at the end; global ns at the end; SM id | the first
// pass's active channels << 32.
enum TraceSlot { TR_G0 = 0, TR_C0, TR_LIST, TR_STREAM, TR_RED, TR_C1, TR_G1, TR_INFO, TR_N };
// This block's slot (recomputed at each use, so no register holds the address across the kernel).
__device__ __forceinline__ unsigned long long& trace_slot(unsigned long long* trace, int slot) {
  return trace[TR_N * (blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) + slot];
}

// ---- programmatic dependent launch (Hopper) ---------------------------------------------------
// A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may start while the
// previous kernel in the stream is still running; it must wait here before reading that kernel's
// outputs. It then lets the next such kernel start early. Both are no-ops otherwise. (Letting the
// next kernel start only after each block's weight stream instead was measured no better; NOTES,
// ninth session.)
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Launch attributes: a (1, S, 1) thread-block cluster when S > 1; programmatic stream
// serialization when `pdl`. Returns how many were written.
inline unsigned launch_attrs(cudaLaunchAttribute (&attr)[2], int S, bool pdl) {
  unsigned n = 0;
  if (S > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = static_cast<unsigned>(S);
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  return n;
}

// ---- per-device launch facts, cached (host) ----------------------------------------------------
// Resident blocks per SM of `Kernel` at `threads` threads and `smem` dynamic bytes (>= 1).
template <auto Kernel>
inline int blocks_per_sm_cached(int device, int threads, size_t smem) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 1;
  if (cache[device] == 0) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, threads, smem) != cudaSuccess || n < 1) n = 1;
    cache[device] = n;
  }
  return cache[device];
}
// Lets `Kernel` use `smem` bytes of dynamic shared memory (beyond 48 KB needs this opt-in), once per device.
template <auto Kernel>
inline cudaError_t allow_smem_cached(int device, size_t smem) {
  static bool done[64] = {false};
  if (device < 0 || device >= 64) return cudaErrorInvalidDevice;
  if (!done[device]) {
    const cudaError_t e = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    done[device] = true;
  }
  return cudaSuccess;
}

// Clusters of S blocks of `Kernel` (`threads` threads, `smem` dynamic bytes) that can be resident at once, cached
// per device and S; -1 when the runtime cannot say (S == 1, or the query failed). A cluster must fit in one GPC,
// so this can be fewer than blocks per SM * SMs / S. Call after the kernel's shared-memory opt-in.
template <auto Kernel>
inline int max_clusters_cached(int device, int S, int threads, size_t smem) {
  static int cache[64][9] = {};
  if (device < 0 || device >= 64 || S < 2 || S > 8) return -1;
  if (cache[device][S] == 0) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(1, static_cast<unsigned>(S), 1);
    cfg.blockDim = dim3(static_cast<unsigned>(threads), 1, 1);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[2];
    cfg.numAttrs = launch_attrs(attr, S, false);
    cfg.attrs = attr;
    int n = 0;
    // relaxed capture mode for this thread: a first query may come while a CUDA graph is being captured
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    (void)cudaThreadExchangeStreamCaptureMode(&mode);
    if (cudaOccupancyMaxActiveClusters(&n, Kernel, &cfg) != cudaSuccess || n < 1) {
      (void)cudaGetLastError();  // clear the sticky-free error of a failed query
      n = -1;
    }
    (void)cudaThreadExchangeStreamCaptureMode(&mode);
    cache[device][S] = n;
  }
  return cache[device][S];
}
// The largest split <= S whose `groups` clusters (one per output tile and token chunk) are all resident in the
// first wave: a split that fills the SMs by block count can still leave a second wave of a few clusters, which
// nearly doubles the launch (H200, teal 4096->12288: 96 tiles, S = 4 took 24.0 us, S = 3 17.4 us; H100, the
// tensor-core spdp kernel at 32 tokens, 64 tiles: 62 resident clusters of 8, S = 8 took 22.4 us, S = 5 20.0 us).
template <auto Kernel>
inline int fit_clusters(int device, int S, int groups, int threads, size_t smem) {
  while (S > 1) {
    const int mc = max_clusters_cached<Kernel>(device, S, threads, smem);
    if (mc < 0 || mc >= groups) break;
    --S;
  }
  return S;
}

// Launches kernel(p) on `grid` (grid.y = S channel slices) with `threads` threads and `smem` bytes of
// dynamic shared memory, as a (1, S, 1) cluster when S > 1, with programmatic stream serialization when `pdl`.
template <class Kernel, class Params>
inline cudaError_t launch_sliced(Kernel kernel, const Params& p, dim3 grid, int threads, size_t smem, int S,
                                 cudaStream_t stream, bool pdl) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(static_cast<unsigned>(threads), 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  cfg.numAttrs = launch_attrs(attr, S, pdl);
  cfg.attrs = attr;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

// ---- block-wide exclusive scan (NW warps), returns exclusive prefix, sets total --------------
// `s_warp` needs NW + 1 ints of shared memory; callers must __syncthreads() before reusing it.
template <int NW>
__device__ __forceinline__ int block_exclusive_scan(int v, int* s_warp, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(FULL, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) s_warp[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int w = lane < NW ? s_warp[lane] : 0;
    int wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(FULL, wi, o);
      if (lane >= o) wi += n;
    }
    if (lane < NW) s_warp[lane] = wi - w;
    if (lane == NW - 1) s_warp[NW] = wi;
  }
  __syncthreads();
  total = s_warp[NW];
  return s_warp[warp] + incl - v;
}

// ---- split-K reduction across the blocks of one thread-block cluster ------------------------
// Every block of the cluster (cluster dims (1, S, 1), blockIdx.y == rank) holds `part`
// ([TC][tile_out] floats, shared memory). Block `rank` sums outputs o in its slice over ranks
// 0..S-1 in a fixed order (deterministic) and calls store(t, o, value). With S == 1 (or on GPUs
// without clusters) the block stores its own partials.
template <int TC, int NTHREADS, class Store>
__device__ __forceinline__ void cluster_reduce_store(float* part, int tile_out, int S, Store store) {
#if SK_HAS_CLUSTER
  if (S > 1) {
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync();  // every block's partials are complete
    const int rank = static_cast<int>(cl.block_rank());
    const int o0 = (tile_out * rank) / S, o1 = (tile_out * (rank + 1)) / S;
    const int w = o1 - o0;
    for (int i = threadIdx.x; i < TC * w; i += NTHREADS) {
      const int t = i / w, o = o0 + i % w;
      float s = 0.f;
      for (int q = 0; q < S; ++q) {
        const float* rp = cl.map_shared_rank(part, q);
        s += rp[t * tile_out + o];
      }
      store(t, o, s);
    }
    cl.sync();  // keep our shared memory alive until every block has read it
    return;
  }
#endif
  for (int i = threadIdx.x; i < TC * tile_out; i += NTHREADS) store(i / tile_out, i % tile_out, part[i]);
}

}  // namespace sk
