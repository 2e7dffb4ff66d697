// fer_fast._C: pybind11 bindings of the native kernels. The module does not link libtorch:
// tensors travel as raw addresses (tensor.data_ptr()) that fer_fast/_ext.py has checked.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "augment.h"

namespace py = pybind11;

namespace {

template <class T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fer_fast native kernels (CPU, and CUDA when built with it); see fer_fast/_ext.py";

  m.def("has_cuda", [] {
#if defined(FER_FAST_WITH_CUDA)
    return true;
#else
    return false;
#endif
  }, "Whether this build contains the CUDA kernels.");

  m.def("augment_cpu",
        [](std::uintptr_t images, std::uintptr_t geom, std::uintptr_t erase, std::uintptr_t out,
           int64_t batch, int out_dtype, int num_threads) {
          py::gil_scoped_release no_gil;
          fer_fast::augment_cpu(as_ptr<const uint8_t>(images), as_ptr<const float>(geom),
                                as_ptr<const int32_t>(erase), as_ptr<void>(out), batch,
                                out_dtype, num_threads);
        },
        py::arg("images"), py::arg("geom"), py::arg("erase"), py::arg("out"), py::arg("batch"),
        py::arg("out_dtype"), py::arg("num_threads"),
        "Ten-crop augmentation on the CPU; pointers to contiguous host tensors.");

#if defined(FER_FAST_WITH_CUDA)
  m.def("cuda_device_count", &fer_fast::cuda_device_count,
        "CUDA devices usable by this module (0 without a driver or GPU).");
  m.def("augment_cuda",
        [](std::uintptr_t images, std::uintptr_t geom, std::uintptr_t erase, std::uintptr_t out,
           int64_t batch, int out_dtype, int device, std::uintptr_t stream) {
          fer_fast::augment_cuda(as_ptr<const uint8_t>(images), as_ptr<const float>(geom),
                                 as_ptr<const int32_t>(erase), as_ptr<void>(out), batch,
                                 out_dtype, device, as_ptr<void>(stream));
        },
        py::arg("images"), py::arg("geom"), py::arg("erase"), py::arg("out"), py::arg("batch"),
        py::arg("out_dtype"), py::arg("device"), py::arg("stream"),
        "Ten-crop augmentation enqueued on a CUDA stream; pointers to device tensors.");
#endif
}
