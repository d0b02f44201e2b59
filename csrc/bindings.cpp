// pybind11 glue only: no maths here.
//
// Errors are exceptions: a c10::Error (TORCH_CHECK and torch's own errors, IndexError and ValueError included)
// becomes _core.EngineError (a RuntimeError) carrying its message without the C++ backtrace, and so does a
// std::runtime_error (how the TorchScript interpreter reports an op that failed in a model's forward); pybind11's
// own errors and std::bad_alloc (MemoryError) get pybind11's default translation. Every call releases the GIL: the engine
// has its own mutex, and Python threads may call it in parallel.
#include <torch/csrc/jit/python/pybind.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/gil_safe_call_once.h>
#include <pybind11/stl.h>

#include "engine.h"
#include "methods/method.h"

namespace py = pybind11;

namespace {

using Release = py::call_guard<py::gil_scoped_release>;

// The Python type, created once per interpreter (not a static py::object: it would be released after Python
// is finalised).
PYBIND11_CONSTINIT py::gil_safe_call_once_and_store<py::object> engine_error;

void translate(std::exception_ptr error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    py::set_error(engine_error.get_stored(), e.what_without_backtrace());
  } catch (const py::builtin_exception&) {
    throw;  // pybind11's (cast errors...): its own translator
  } catch (const std::runtime_error& e) {
    py::set_error(engine_error.get_stored(), e.what());
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "maps_interpret C++ core: attribution maps and per-element statistics on LibTorch";
  m.def("built_against", [] { return std::string(MI_TORCH_VERSION); },
        "Version of torch this extension was compiled against.");
  m.def("format_check", [](int64_t n) { return c10::str("n=", n, " x=", 0.5); },
        "A number formatted by this module's C++ streams, as every error message is (the loader's self-check).");
  m.def("raise_check", [](int64_t n) { TORCH_CHECK(false, "n=", n, " x=", 0.5); },
        "Raises EngineError('n=<n> x=0.5'): a C++ exception crossing into Python (the loader's self-check).");

  engine_error.call_once_and_store_result(
      [&] { return py::object(py::exception<void>(m, "EngineError", PyExc_RuntimeError)); });
  // Module-local: tried before any translator torch (or another module) registers globally.
  py::register_local_exception_translator(translate);

  m.def("methods", &mi::method_names, "The attribution methods registered in the C++ core, sorted.");
  m.attr("SUBSET_STRIDE") = mi::kSubsetStride;

  py::class_<mi::EngineOptions>(m, "EngineOptions")
      .def(py::init<>())
      .def_readwrite("device", &mi::EngineOptions::device)
      .def_readwrite("method", &mi::EngineOptions::method)
      .def_readwrite("parameters", &mi::EngineOptions::parameters)
      .def_readwrite("noise_tunnel", &mi::EngineOptions::noise_tunnel)
      .def_readwrite("target", &mi::EngineOptions::target)
      .def_readwrite("target_mode", &mi::EngineOptions::target_mode)
      .def_readwrite("amp", &mi::EngineOptions::amp)
      .def_readwrite("deterministic", &mi::EngineOptions::deterministic)
      .def_readwrite("count_zeros", &mi::EngineOptions::count_zeros)
      .def_readwrite("abs", &mi::EngineOptions::abs)
      .def_readwrite("statistics", &mi::EngineOptions::statistics)
      .def_readwrite("group_by", &mi::EngineOptions::group_by);

  using Ids = std::vector<int64_t>;
  py::class_<mi::Engine>(m, "Engine")
      .def(py::init<const torch::jit::Module&, mi::EngineOptions>(), py::arg("module"), py::arg("options"), Release())
      .def_static("from_file", &mi::Engine::from_file, py::arg("path"), py::arg("options"), Release())
      .def("attribute", &mi::Engine::attribute, py::arg("batch"), py::arg("targets") = Ids{},
           py::arg("seeds") = Ids{}, Release())
      .def("accumulate", &mi::Engine::accumulate, py::arg("batch"), py::arg("ids"), py::arg("return_maps") = false,
           py::arg("targets") = Ids{}, py::arg("seeds") = Ids{}, py::arg("subsets") = Ids{},
           py::arg("labels") = Ids{}, Release())
      .def("outputs", &mi::Engine::outputs, py::arg("batch"), Release())
      .def("reserve", &mi::Engine::reserve, py::arg("ids"), Release())
      .def("restore", &mi::Engine::restore, py::arg("subsets"), py::arg("ids"), py::arg("counts"), py::arg("sums"),
           py::arg("abs_sums") = py::none(), py::arg("mean64") = py::none(), py::arg("m2") = py::none(), Release())
      .def("ids", &mi::Engine::ids, py::arg("subsets") = false, Release())
      .def("counts", &mi::Engine::counts, py::arg("subsets") = false, Release())
      .def("sums", &mi::Engine::sums, py::arg("subsets") = false, Release())
      .def("abs_sums", &mi::Engine::abs_sums, py::arg("subsets") = false, Release())
      .def("welford_means", &mi::Engine::welford_means, py::arg("subsets") = false, Release())
      .def("m2", &mi::Engine::m2, py::arg("subsets") = false, Release())
      .def("means", &mi::Engine::means, Release())
      .def("last_subsets", &mi::Engine::last_subsets, Release())
      .def("zero_fraction", &mi::Engine::zero_fraction, Release())
      .def_property_readonly("device", &mi::Engine::device);
}
