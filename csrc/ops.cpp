// Operator schemas of the `simcore` library and the Python module that loads them.
// Implementations register per device: cpu/ops_cpu.cpp, cuda/ops_cuda.cpp; fake (meta)
// implementations for torch.compile live in simcore_ext/_ops.py.
#include <Python.h>
#include <torch/library.h>

namespace simcore {
const char* cpu_isa_name();  // cpu/ops_cpu.cpp
bool built_with_cuda();      // cuda/ops_cuda.cpp, or below
}  // namespace simcore

#ifndef SIMCORE_WITH_CUDA
bool simcore::built_with_cuda() { return false; }
#endif

namespace {
PyObject* cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(simcore::cpu_isa_name());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}
PyObject* with_cuda(PyObject*, PyObject*) { return PyBool_FromLong(simcore::built_with_cuda()); }

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "Instruction set of the CPU kernels: generic, avx2, avx512 or avx512bf16 (SIMCORE_CPU_ISA "
     "may choose a lower one)."},
    {"with_cuda", with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// `import simcore_ext._C` runs the static TORCH_LIBRARY registrations of this library.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(simcore, m) {
  // K largest <c_j, u_i> per centroid over rows not excluded, descending, ties to the
  // smaller row index; missing slots hold -inf / -1. float32 accumulation.
  m.def("masked_topk(Tensor centroids, Tensor openset, Tensor? excluded, int K) -> (Tensor, Tensor)");
  // The fused pass of select_coreset: as masked_topk, with scores divided by ||u_i|| when
  // `normalize`, and only scores strictly above floor[j] (float32 [k]) kept when a floor is
  // given; also returns every row's L2 norm (float32) for validation.
  m.def(
      "scan_topk(Tensor centroids, Tensor openset, Tensor? excluded, int K, bool normalize, "
      "Tensor? floor=None) -> (Tensor, Tensor, Tensor)");
  // Per centroid, max <c_j, u_i> over the selected rows (-inf where none).
  m.def("facility_location(Tensor centroids, Tensor openset, Tensor selected) -> Tensor");
}
