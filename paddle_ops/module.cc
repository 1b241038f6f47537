// `llmpre.ops._paddle_ops`: the shared library holding every llmpre Paddle
// custom op, importable as a tiny Python module so that llmpre.ops can find
// the file (importlib) and read how it was built before registering the ops
// with paddle.utils.cpp_extension's load_op_meta_info_and_register_op.
//
//   PADDLE_VERSION  the Paddle version whose headers and libpaddle.so it was built against
//   CUDA_OPS        ops that also have a CUDA path in this build (tuple of names)
//   cpu_isa()       "avx2" or "baseline": the CPU kernels' code path on this machine
#include <Python.h>

#include "common/isa.h"

#ifndef LLMPRE_PADDLE_VERSION
#define LLMPRE_PADDLE_VERSION "unknown"
#endif
#ifndef LLMPRE_CUDA_OPS
#define LLMPRE_CUDA_OPS ""
#endif

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(llmpre::kernels::active_isa()); }

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The CPU kernels' code path on this machine: 'avx2' or 'baseline'."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_paddle_ops",
    "llmpre's Paddle custom-op library (register it through llmpre.ops, not by importing this).",
    -1, methods, nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__paddle_ops(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  PyObject* names = PyUnicode_FromString(LLMPRE_CUDA_OPS);
  PyObject* sep = PyUnicode_FromString(",");
  PyObject* parts = (names && sep) ? PyUnicode_Split(names, sep, -1) : nullptr;
  PyObject* cuda_ops = PyTuple_New(0);
  if (parts != nullptr) {
    PyObject* kept = PyList_New(0);
    for (Py_ssize_t i = 0; kept && i < PyList_Size(parts); ++i) {
      PyObject* item = PyList_GetItem(parts, i);
      if (PyUnicode_GetLength(item) > 0) PyList_Append(kept, item);
    }
    if (kept) {
      Py_XDECREF(cuda_ops);
      cuda_ops = PyList_AsTuple(kept);
      Py_DECREF(kept);
    }
  }
  Py_XDECREF(parts);
  Py_XDECREF(sep);
  Py_XDECREF(names);
  if (cuda_ops == nullptr || PyModule_AddObject(m, "CUDA_OPS", cuda_ops) < 0 ||
      PyModule_AddStringConstant(m, "PADDLE_VERSION", LLMPRE_PADDLE_VERSION) < 0) {
    Py_XDECREF(cuda_ops);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
