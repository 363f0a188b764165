// Operator schemas of the `sdu` namespace and the module entry point.
// Kernels live in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and
// autograd are registered from Python (sdu_ext/ops.py).
#include <Python.h>
#include <torch/library.h>

#ifndef SDU_TORCH_VERSION
#define SDU_TORCH_VERSION "unknown"
#endif

extern "C" {
// A bare module so `import sdu_ext._C` loads the shared object (and with it the
// TORCH_LIBRARY registrations below) without pulling in pybind11. Its constants
// record how it was built, for sdu_ext.build_info().
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
  };
  PyObject* mod = PyModule_Create(&module_def);
  if (!mod) return nullptr;
#ifdef WITH_CUDA
  const long cuda = 1;
#else
  const long cuda = 0;
#endif
#ifdef _OPENMP
  const long openmp = 1;
#else
  const long openmp = 0;
#endif
  if (PyModule_AddIntConstant(mod, "WITH_CUDA", cuda) < 0 ||
      PyModule_AddIntConstant(mod, "WITH_OPENMP", openmp) < 0 ||
      PyModule_AddStringConstant(mod, "TORCH_VERSION", SDU_TORCH_VERSION) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
}

TORCH_LIBRARY(sdu, m) {
  m.def("soft_threshold(Tensor x, Tensor theta) -> Tensor");
  // Returns nothing (the wrapper returns x): torch.compile functionalises custom
  // mutating ops only when their outputs do not alias an input.
  m.def("soft_threshold_(Tensor(a!) x, Tensor theta) -> ()");
  m.def("soft_threshold_backward(Tensor grad, Tensor y, Tensor theta) -> (Tensor, Tensor)");
  m.def("lista_layer(Tensor y, Tensor xs, Tensor W1, Tensor W2, Tensor theta) -> Tensor");
  m.def("residual_norms(Tensor iterates, Tensor? reference) -> Tensor");
  m.def(
      "residual_norms_backward(Tensor grad, Tensor iterates, Tensor? reference, Tensor norms,"
      " bool reference_grad=True) -> (Tensor, Tensor)");
  m.def("descent_violations(Tensor norms, float eps, str form) -> (Tensor, Tensor)");
  m.def(
      "descent_violations_backward(Tensor grad, Tensor norms, float eps, str form) -> Tensor");
  m.def(
      "descent_constraints(Tensor iterates, Tensor? reference, float eps, str form)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("min_norm_subgradient(Tensor grad, Tensor y, float alpha) -> Tensor");
  m.def("min_norm_subgradient_backward(Tensor grad_out, Tensor grad, Tensor y, float alpha) -> Tensor");
}
