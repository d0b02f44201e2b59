// pybind11 glue only: no maths here.
//
// Errors cross into Python as values: each call catches C++ exceptions itself and returns a Python exception
// object (its message only), which the wrapper (maps_interpret/engine.py) raises as a one-line error.
// Why not pybind11's exception translation: on the lent GPU image a static libstdc++ copy inside this module
// crashed while a C++ exception's message was formatted. The link fix (CMakeLists.txt) addresses that, but no
// GPU run has confirmed it yet (BENCHMARKS.md): until one does, no C++ exception crosses this boundary.
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
      .def_readwrite("count_zeros", &mi::EngineOptions::count_zeros)
      .def_readwrite("target_mode", &mi::EngineOptions::target_mode)
      .def_readwrite("n_samples", &mi::EngineOptions::n_samples)
      .def_readwrite("noise_level", &mi::EngineOptions::noise_level)
      .def_readwrite("n_steps", &mi::EngineOptions::n_steps)
      .def_readwrite("baseline", &mi::EngineOptions::baseline)
      .def_readwrite("chunk", &mi::EngineOptions::chunk)
      .def_readwrite("seed", &mi::EngineOptions::seed)
      .def_readwrite("abs", &mi::EngineOptions::abs)
      .def_readwrite("statistics", &mi::EngineOptions::statistics)
      .def_readwrite("group_by", &mi::EngineOptions::group_by);
  m.attr("SUBSET_STRIDE") = mi::kSubsetStride;

  py::class_<mi::Engine>(m, "Engine")
      .def_static("create", [](const torch::jit::Module& module, const mi::EngineOptions& options) {
        return guarded([&] { return std::make_unique<mi::Engine>(module, options); });
      }, py::arg("module"), py::arg("options"))
      .def_static("from_file", [](const std::string& path, const mi::EngineOptions& options) {
        return guarded([&] { return mi::Engine::from_file(path, options); });
      }, py::arg("path"), py::arg("options"))
      .def("accumulate", [](mi::Engine& engine, const at::Tensor& batch, const std::vector<int64_t>& ids,
                            bool return_maps, const std::vector<int64_t>& targets, const std::vector<int64_t>& seeds,
                            const std::vector<int64_t>& subsets, const std::vector<int64_t>& labels) {
        return guarded([&] { return engine.accumulate(batch, ids, return_maps, targets, seeds, subsets, labels); });
      }, py::arg("batch"), py::arg("ids"), py::arg("return_maps") = false,
         py::arg("targets") = std::vector<int64_t>{}, py::arg("seeds") = std::vector<int64_t>{},
         py::arg("subsets") = std::vector<int64_t>{}, py::arg("labels") = std::vector<int64_t>{})
      .def("reserve", [](mi::Engine& engine, const std::vector<int64_t>& ids) {
        return guarded([&] { engine.reserve(ids); return true; });
      }, py::arg("ids"))
      .def("ids", [](const mi::Engine& engine, bool subsets) { return guarded([&] { return engine.ids(subsets); }); },
           py::arg("subsets") = false)
      .def("counts", [](const mi::Engine& engine, bool subsets) {
        return guarded([&] { return engine.counts(subsets); });
      }, py::arg("subsets") = false)
      .def("sums", [](const mi::Engine& engine, bool subsets) { return guarded([&] { return engine.sums(subsets); }); },
           py::arg("subsets") = false)
      .def("abs_sums", [](const mi::Engine& engine, bool subsets) {
        return guarded([&] { return engine.abs_sums(subsets); });
      }, py::arg("subsets") = false)
      .def("welford_means", [](const mi::Engine& engine, bool subsets) {
        return guarded([&] { return engine.welford_means(subsets); });
      }, py::arg("subsets") = false)
      .def("m2", [](const mi::Engine& engine, bool subsets) { return guarded([&] { return engine.m2(subsets); }); },
           py::arg("subsets") = false)
      .def("means", [](const mi::Engine& engine) { return guarded([&] { return engine.means(); }); })
      .def("last_subsets", [](const mi::Engine& engine) { return guarded([&] { return engine.last_subsets(); }); })
      .def("zero_fraction", [](const mi::Engine& engine) { return guarded([&] { return engine.zero_fraction(); }); })
      .def_property_readonly("device", &mi::Engine::device);
}
