// fer_fast._C: pybind11 bindings of the native kernels. The module does not link libtorch:
// tensors travel as raw addresses (tensor.data_ptr()) that fer_fast/augmentation.py has checked.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <tuple>

#include "augment.h"
#include "bn_act.h"

namespace py = pybind11;

namespace {

template <class T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fer_fast native kernels (CPU, and CUDA when built with it); see fer_fast/augmentation.py";

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

  // BatchNorm + ReLU CPU kernels: shape = (n, c, h, w, dtype, relu_first)
  using ShapeArgs = std::tuple<int64_t, int64_t, int64_t, int64_t, int, bool>;
  auto shape = [](const ShapeArgs& a) {
    return fer_fast::Shape{std::get<0>(a), std::get<1>(a), std::get<2>(a), std::get<3>(a),
                           std::get<4>(a), std::get<5>(a)};
  };
  m.def("bn_stats_cpu",
        [shape](std::uintptr_t x, const ShapeArgs& s, std::uintptr_t out, int threads) {
          py::gil_scoped_release no_gil;
          fer_fast::bn_stats_cpu(as_ptr<const void>(x), shape(s), as_ptr<double>(out), threads);
        },
        py::arg("x"), py::arg("shape"), py::arg("out"), py::arg("threads"),
        "Per-channel shifted sums of the BatchNorm input: out fp64 [3, c].");
  m.def("bn_act_forward_cpu",
        [shape](std::uintptr_t x, std::uintptr_t out, const ShapeArgs& s, std::uintptr_t scale,
                std::uintptr_t shift, int threads) {
          py::gil_scoped_release no_gil;
          fer_fast::bn_act_forward_cpu(as_ptr<const void>(x), as_ptr<void>(out), shape(s),
                                       as_ptr<const float>(scale), as_ptr<const float>(shift),
                                       threads);
        },
        py::arg("x"), py::arg("out"), py::arg("shape"), py::arg("scale"), py::arg("shift"),
        py::arg("threads"), "BatchNorm + ReLU output of a channels_last conv output.");
  m.def("bn_act_backward_sums_cpu",
        [shape](std::uintptr_t dout, std::uintptr_t x, const ShapeArgs& s, std::uintptr_t coef,
                std::uintptr_t out, int threads) {
          py::gil_scoped_release no_gil;
          fer_fast::bn_act_backward_sums_cpu(as_ptr<const void>(dout), as_ptr<const void>(x),
                                             shape(s), as_ptr<const float>(coef),
                                             as_ptr<double>(out), threads);
        },
        py::arg("dout"), py::arg("x"), py::arg("shape"), py::arg("coef"), py::arg("out"),
        py::arg("threads"), "sum dz and sum dz * x_hat per channel: out fp64 [2, c].");
  m.def("bn_act_backward_cpu",
        [shape](std::uintptr_t dout, std::uintptr_t x, std::uintptr_t dy, const ShapeArgs& s,
                std::uintptr_t coef, std::uintptr_t means, bool training, int threads) {
          py::gil_scoped_release no_gil;
          fer_fast::bn_act_backward_cpu(as_ptr<const void>(dout), as_ptr<const void>(x),
                                        as_ptr<void>(dy), shape(s), as_ptr<const float>(coef),
                                        as_ptr<const float>(means), training, threads);
        },
        py::arg("dout"), py::arg("x"), py::arg("dy"), py::arg("shape"), py::arg("coef"),
        py::arg("means"), py::arg("training"), py::arg("threads"),
        "Gradient of the conv output through BatchNorm + ReLU.");

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
