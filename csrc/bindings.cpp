// pybind11 glue only: no maths here.
#include <torch/csrc/jit/python/pybind.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>

#include "engine.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "maps_interpret C++ core: attribution maps and per-element statistics on LibTorch";
  // c10 errors become Python exceptions with their message only. what() would also symbolise a C++
  // backtrace, which is slow, noisy, and was seen to crash on one GPU image.
  py::register_local_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });

  m.def("built_against", [] { return std::string(MI_TORCH_VERSION); },
        "Version of torch this extension was compiled against.");

  py::class_<mi::EngineOptions>(m, "EngineOptions")
      .def(py::init<>())
      .def_readwrite("device", &mi::EngineOptions::device)
      .def_readwrite("method", &mi::EngineOptions::method)
      .def_readwrite("target", &mi::EngineOptions::target)
      .def_readwrite("amp", &mi::EngineOptions::amp)
      .def_readwrite("cam_variant", &mi::EngineOptions::cam_variant)
      .def_readwrite("channels_last", &mi::EngineOptions::channels_last)
      .def_readwrite("count_zeros", &mi::EngineOptions::count_zeros);

  py::class_<mi::Engine>(m, "Engine")
      .def(py::init<const torch::jit::Module&, mi::EngineOptions>(), py::arg("module"),
           py::arg("options"))
      .def_static("from_file", &mi::Engine::from_file, py::arg("path"), py::arg("options"),
                  py::call_guard<py::gil_scoped_release>())
      .def("accumulate", &mi::Engine::accumulate, py::arg("batch"), py::arg("ids"),
           py::arg("return_maps") = false, py::call_guard<py::gil_scoped_release>())
      .def("ids", &mi::Engine::ids)
      .def("counts", &mi::Engine::counts)
      .def("sums", &mi::Engine::sums, py::call_guard<py::gil_scoped_release>())
      .def("means", &mi::Engine::means, py::call_guard<py::gil_scoped_release>())
      .def("zero_fraction", &mi::Engine::zero_fraction, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("device", &mi::Engine::device);
}
