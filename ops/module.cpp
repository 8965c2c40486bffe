// The Python module `detector._C`. Importing it runs the static TORCH_LIBRARY registrations of
// every op in this library; the module itself exposes nothing else.
#include <Python.h>

#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda.h>
#endif

namespace detector {

// Returns the CUDA version the library was compiled against, or -1 for a CPU-only build.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

TORCH_LIBRARY(detector, m) { m.def("_cuda_version() -> int", &cuda_version); }

}  // namespace detector

static PyModuleDef detector_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&detector_c_module); }
