// The sparsekit op library: schemas of every op (the contract; definitions in
// sparsekit/kernels/reference.py). CPU kernels are registered in csrc/cpu/ops_cpu.cpp, CUDA kernels
// in csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(sparsekit, CUDA, m)). Importing the Python module
// `sparsekit._C` loads this shared library, which runs the static registrations below.
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace sparsekit::cpu {
std::string cpu_isa(const std::string& want);  // csrc/cpu/ops_cpu.cpp
}

TORCH_LIBRARY(sparsekit, m) {
  m.def("select(Tensor x, float threshold) -> (Tensor xs, Tensor idx, Tensor nnz)");
  m.def("teal_matvec(Tensor x, Tensor w_t, float threshold) -> Tensor");
  m.def("teal_matvec_sel(Tensor xs, Tensor idx, Tensor nnz, Tensor w_t) -> Tensor");
  // the relative rule fused (reference.teal_matvec_rel / spdp_matvec_rel); CUDA only: ops.py
  // composes mask_relative with the plain op on the other backends
  m.def("teal_matvec_rel(Tensor x, Tensor w_t, float threshold) -> Tensor");
  m.def(
      "spdp_matvec_rel(Tensor x, Tensor values, Tensor bitmap, Tensor offsets, int n, int tile_rows, "
      "float threshold) -> Tensor");
  // the SwiGLU input fused (reference.teal_matvec_glu / spdp_matvec_glu): gu [..., 2K] holds the
  // stacked gate/up outputs and the product reads silu(gate) * up; CUDA only, composed elsewhere
  m.def("teal_matvec_glu(Tensor gu, Tensor w_t, float threshold) -> Tensor");
  m.def(
      "spdp_matvec_glu(Tensor gu, Tensor values, Tensor bitmap, Tensor offsets, int n, int tile_rows, "
      "float threshold) -> Tensor");
  // spdp_matvec(_rel, _glu, _sel): tile_rows < 0 declares the fixed balanced layout (formats/spdp.py,
  // fixed_layout) with -tile_rows rows per tile: the CUDA one-token kernel then addresses the values
  // without reading offsets; every backend computes the same product
  m.def(
      "spdp_matvec(Tensor x, Tensor values, Tensor bitmap, Tensor offsets, int n, int tile_rows, "
      "float threshold) -> Tensor");
  m.def(
      "spdp_matvec_sel(Tensor xs, Tensor idx, Tensor nnz, Tensor values, Tensor bitmap, "
      "Tensor offsets, int n, int tile_rows) -> Tensor");
  // the prefill path: the dense [n, k] weight of an spdp-packed one, bit for bit
  m.def("spdp_decode(Tensor values, Tensor bitmap, Tensor offsets, int n, int k, int tile_rows) -> Tensor");
  m.def(
      "spinfer_matmul(Tensor x, Tensor values, Tensor bitmaps, Tensor tile_offsets, "
      "Tensor group_offsets, int n, int k) -> Tensor");
  // the one-token path for unstructured weights (formats/rowdelta.py: rows of values and 4-bit column steps)
  m.def("rowdelta_matvec(Tensor x, Tensor values, Tensor deltas, Tensor row_offsets, int n, int k) -> Tensor");
  // Not part of the contract: which SIMD path the CPU kernels use ("avx512", "avx2", "base").
  // An empty string only queries; a name switches (tests use it to cover every path).
  m.def("_cpu_isa(str want) -> str", &sparsekit::cpu::cpu_isa);
}

extern "C" {
// `import sparsekit._C` needs a module object; the ops live in torch.ops.sparsekit.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "sparsekit compiled ops (registered in torch.ops.sparsekit)",
      -1,
      nullptr,
  };
  PyObject* mod = PyModule_Create(&module_def);
  if (mod != nullptr) {
#ifdef SPARSEKIT_WITH_CUDA
    PyModule_AddIntConstant(mod, "WITH_CUDA", 1);
#else
    PyModule_AddIntConstant(mod, "WITH_CUDA", 0);
#endif
  }
  return mod;
}
}
