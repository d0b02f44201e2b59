// pybind11 glue only: no maths here.
//
// Errors cross into Python as values: each call catches C++ exceptions itself and returns a Python exception
// object (its message only), which the wrapper (maps_interpret/engine.py) raises as a one-line error.
#include <torch/csrc/jit/python/pybind.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>

#include <type_traits>

#include "engine.h"

namespace py = pybind11;

namespace {

// Runs `fn` without the GIL; returns its result converted to Python, or the exception it raised.
template <typename Fn>
py::object guarded(Fn&& fn) {
  using Result = std::invoke_result_t<Fn>;
  std::optional<Result> value;
  std::string error;
  PyObject* type = PyExc_RuntimeError;
  {
    py::gil_scoped_release release;
    try {
      value.emplace(fn());
    } catch (const c10::IndexError& e) {
      error = e.what_without_backtrace();
      type = PyExc_IndexError;
    } catch (const c10::ValueError& e) {
      error = e.what_without_backtrace();
      type = PyExc_ValueError;
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "unknown C++ exception";
    }
  }
  if (!value.has_value()) {
    return py::reinterpret_steal<py::object>(PyObject_CallFunction(type, "s", error.c_str()));
  }
  return py::cast(std::move(*value));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "maps_interpret C++ core: attribution maps and per-element statistics on LibTorch";
  m.def("built_against", [] { return std::string(MI_TORCH_VERSION); },
        "Version of torch this extension was compiled against.");
  m.def("format_check", [](int64_t n) { return c10::str("n=", n, " x=", 0.5); },
        "A number formatted by this module's C++ streams, as every error message is (the loader's self-check).");

  py::class_<mi::EngineOptions>(m, "EngineOptions")
      .def(py::init<>())
      .def_readwrite("device", &mi::EngineOptions::device)
      .def_readwrite("method", &mi::EngineOptions::method)
      .def_readwrite("target", &mi::EngineOptions::target)
      .def_readwrite("amp", &mi::EngineOptions::amp)
      .def_readwrite("cam_variant", &mi::EngineOptions::cam_variant)
      .def_readwrite("deterministic", &mi::EngineOptions::deterministic)
      .def_readwrite("count_zeros", &mi::EngineOptions::count_zeros);

  py::class_<mi::Engine>(m, "Engine")
      .def_static("create", [](const torch::jit::Module& module, const mi::EngineOptions& options) {
        return guarded([&] { return std::make_unique<mi::Engine>(module, options); });
      }, py::arg("module"), py::arg("options"))
      .def_static("from_file", [](const std::string& path, const mi::EngineOptions& options) {
        return guarded([&] { return mi::Engine::from_file(path, options); });
      }, py::arg("path"), py::arg("options"))
      .def("accumulate", [](mi::Engine& engine, const at::Tensor& batch, const std::vector<int64_t>& ids,
                            bool return_maps) {
        return guarded([&] { return engine.accumulate(batch, ids, return_maps); });
      }, py::arg("batch"), py::arg("ids"), py::arg("return_maps") = false)
      .def("reserve", [](mi::Engine& engine, const std::vector<int64_t>& ids) {
        return guarded([&] { engine.reserve(ids); return true; });
      }, py::arg("ids"))
      .def("ids", [](const mi::Engine& engine) { return guarded([&] { return engine.ids(); }); })
      .def("counts", [](const mi::Engine& engine) { return guarded([&] { return engine.counts(); }); })
      .def("sums", [](const mi::Engine& engine) { return guarded([&] { return engine.sums(); }); })
      .def("means", [](const mi::Engine& engine) { return guarded([&] { return engine.means(); }); })
      .def("zero_fraction", [](const mi::Engine& engine) { return guarded([&] { return engine.zero_fraction(); }); })
      .def_property_readonly("device", &mi::Engine::device);
}
