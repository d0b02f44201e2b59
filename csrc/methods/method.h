// The attribution method interface and its registry.
//
// A method is one class in one file of csrc/methods/ that registers itself by name (MI_REGISTER_METHOD):
// the engine makes the method named by its options once, in its constructor, and calls it per batch.
// Adding a method therefore touches no other C++ file (CMakeLists.txt globs csrc/methods/*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mi {

// What a method runs: the engine's copy of the model (on its device, eval mode, frozen parameters), the
// autocast dtype of its forward passes (none: float32), and whether its sums must be the same run after run
// (--deterministic: no atomic additions on CUDA). Module is a handle: copies share the model.
struct Network {
  torch::jit::Module model;
  std::optional<c10::ScalarType> amp;
  bool deterministic = false;
};

// One parameter value as Python gives it (True stays a bool, 3 an integer, 0.5 a double).
using ParameterValue = std::variant<bool, int64_t, double, std::string>;

// The named parameters of one method (or of the noise tunnel), read with typed accessors. `owner` names
// who reads them in the errors: "integrated-gradients needs parameter 'n_steps' (an integer)".
// Python checks the values' ranges once; here only their presence and type are checked.
class Parameters {
 public:
  Parameters(std::map<std::string, ParameterValue> values, std::string owner)
      : values_(std::move(values)), owner_(std::move(owner)) {}

  bool flag(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t fallback) const;  // `fallback` when absent
  double number(const std::string& name) const;  // an integer is accepted as a number
  std::string text(const std::string& name) const;

 private:
  const ParameterValue& value(const std::string& name, const char* kind) const;
  [[noreturn]] void wrong_type(const std::string& name, const char* kind) const;

  std::map<std::string, ParameterValue> values_;
  std::string owner_;
};

// One attribution method, made once per engine.
class Method {
 public:
  virtual ~Method() = default;

  // Maps of `x` (B, C, *spatial) float32 on the engine's device: float32 (B, *map shape) on that device.
  // `targets`: (B,) int64 on the device, each sample's output node. `node` >= 0: the fixed node every
  // target equals (target mode "node"), to be checked against the model's output width (checked_output),
  // -1 otherwise. `seeds`: each sample's own seed (empty: the sample's index); only the noise tunnel uses them.
  virtual at::Tensor attribute(const at::Tensor& x, const at::Tensor& targets, int64_t node,
                               const std::vector<int64_t>& seeds) = 0;
};

using MethodFactory = std::function<std::unique_ptr<Method>(const Network&, const Parameters&)>;

// Adds `name` to the registry; returns true so that MI_REGISTER_METHOD can call it from a static initialiser.
bool register_method(const std::string& name, MethodFactory factory);

// The method registered under `name`, made for `network` with `parameters`; an unknown name is an error
// listing the registered ones.
std::unique_ptr<Method> make_method(const std::string& name, const Network& network, const Parameters& parameters);

// The registered names, sorted.
std::vector<std::string> method_names();

}  // namespace mi

#define MI_CONCAT_INNER(a, b) a##b
#define MI_CONCAT(a, b) MI_CONCAT_INNER(a, b)

// Registers the factory (a callable (const Network&, const Parameters&) -> std::unique_ptr<Method>) under `name`
// when the module loads. The registry is a function-local static, so the order in which the files' static
// initialisers run does not matter.
// Variadic: a lambda's body may hold commas outside parentheses.
#define MI_REGISTER_METHOD(name, ...)                                                          \
  namespace {                                                                                  \
  const bool MI_CONCAT(mi_registered_, __LINE__) = ::mi::register_method(name, __VA_ARGS__); \
  }
