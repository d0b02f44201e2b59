#include "methods/method.h"

#include <c10/util/Exception.h>

namespace mi {
namespace {

// Function-local: filled by the static initialisers of the method files, whatever their order.
std::map<std::string, MethodFactory>& registry() {
  static std::map<std::string, MethodFactory> factories;
  return factories;
}

}  // namespace

bool register_method(const std::string& name, MethodFactory factory) {
  // Two files claiming one name is a programming error: fail loudly when the module loads.
  const bool inserted = registry().emplace(name, std::move(factory)).second;
  TORCH_INTERNAL_ASSERT(inserted, "attribution method '", name, "' is registered twice");
  return true;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);  // std::map: sorted
  return names;
}

std::unique_ptr<Method> make_method(const std::string& name, const Network& network, const Parameters& parameters) {
  const auto found = registry().find(name);
  if (found == registry().end()) {
    std::string known;
    for (const auto& registered : method_names()) known += (known.empty() ? "" : ", ") + registered;
    TORCH_CHECK(false, "unknown attribution method '", name, "': use one of ", known);
  }
  return found->second(network, parameters);
}

const ParameterValue& Parameters::value(const std::string& name, const char* kind) const {
  const auto found = values_.find(name);
  TORCH_CHECK(found != values_.end(), owner_, " needs parameter '", name, "' (", kind, ")");
  return found->second;
}

void Parameters::wrong_type(const std::string& name, const char* kind) const {
  const auto& held = values_.at(name);
  const char* got = std::holds_alternative<bool>(held)      ? "a boolean"
                    : std::holds_alternative<int64_t>(held) ? "an integer"
                    : std::holds_alternative<double>(held)  ? "a number"
                                                            : "a string";
  TORCH_CHECK(false, owner_, " needs parameter '", name, "' (", kind, "), got ", got);
}

bool Parameters::flag(const std::string& name) const {
  const auto& held = value(name, "a boolean");
  if (const auto* b = std::get_if<bool>(&held)) return *b;
  wrong_type(name, "a boolean");
}

int64_t Parameters::integer(const std::string& name) const {
  const auto& held = value(name, "an integer");
  if (const auto* i = std::get_if<int64_t>(&held)) return *i;
  wrong_type(name, "an integer");
}

int64_t Parameters::integer(const std::string& name, int64_t fallback) const {
  return values_.count(name) ? integer(name) : fallback;
}

double Parameters::number(const std::string& name) const {
  const auto& held = value(name, "a number");
  if (const auto* d = std::get_if<double>(&held)) return *d;
  if (const auto* i = std::get_if<int64_t>(&held)) return static_cast<double>(*i);
  wrong_type(name, "a number");
}

std::string Parameters::text(const std::string& name) const {
  const auto& held = value(name, "a string");
  if (const auto* s = std::get_if<std::string>(&held)) return *s;
  wrong_type(name, "a string");
}

}  // namespace mi
