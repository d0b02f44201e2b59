"""Reading the fields of a model.json `network` entry as ClinicaDL 2.0.0 reads them (its pydantic configs):
the same names, defaults and checks, so that a config 2.0 refused is refused here too, with a message instead of
a network of the wrong shape. Layer specs come out in the form MONAI's factories take: "name" or
("name", {arguments})."""

from __future__ import annotations

from typing import Any, Optional

# 2.0's enums (case-insensitive there, and in MONAI's factories): nothing else is accepted by its configs.
ACTIVATIONS = frozenset({"elu", "relu", "leakyrelu", "prelu", "relu6", "selu", "celu", "gelu", "sigmoid", "tanh",
                         "softmax", "logsoftmax", "mish"})
CONV_NORMS = frozenset({"group", "syncbatch", "batch", "instance"})
NORMS = CONV_NORMS | {"layer"}  # LayerNorm only after linear layers
POOLS = frozenset({"max", "avg", "adaptiveavg", "adaptivemax"})

_REQUIRED = object()


class ConfigError(ValueError):
    """A `network` entry ClinicaDL 2.0 would not have built. The message says which field and what is wrong."""


class Fields:
    """The fields of one config dict. Top-level entries were all written by 2.0 (it refuses a missing or unknown
    one); nested option dicts (conv_args, mlp_args) fall back on 2.0's defaults and ignore unknown keys, as its
    pydantic models do. `prefix` names the dict in messages."""

    def __init__(self, config: Any, prefix: str = "", strict: bool = True):
        if not isinstance(config, dict):
            raise ConfigError(f"{prefix or 'network'} must be a JSON object, got {type(config).__name__}")
        self.config = config
        self.prefix = prefix
        self.strict = strict
        self.used = {"name_"}

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, default: Any = _REQUIRED) -> Any:
        self.used.add(name)
        if name in self.config:
            return self.config[name]
        if default is _REQUIRED:
            raise ConfigError(f"field {self.key(name)!r} is missing")
        return default

    def done(self) -> None:
        """Refuses fields this version does not know: a config from another ClinicaDL version would be rebuilt
        without them, i.e. wrong."""
        unknown = sorted(set(self.config) - self.used) if self.strict else []
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(self.key(u) for u in unknown)} (not in ClinicaDL 2.0.0)")

    # Typed readers -----------------------------------------------------------------------------------------------

    def positive_int(self, name: str, default: Any = _REQUIRED) -> int:
        return positive_int(self.get(name, default), self.key(name))

    def optional_positive_int(self, name: str, default: Any = _REQUIRED) -> Optional[int]:
        value = self.get(name, default)
        return None if value is None else positive_int(value, self.key(name))

    def positive_ints(self, name: str, default: Any = _REQUIRED) -> list[int]:
        value = self.get(name, default)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{self.key(name)} must be a list of positive integers, got {value!r}")
        return [positive_int(v, self.key(name)) for v in value]

    def boolean(self, name: str, default: Any = _REQUIRED) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)} must be true or false, got {value!r}")
        return value

    def dropout(self, name: str = "dropout", default: Any = None) -> Optional[float]:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{self.key(name)} must be null or a number in [0, 1], got {value!r}")
        return float(value)

    def activation(self, name: str, default: Any = _REQUIRED, optional: bool = True):
        value = self.get(name, default)
        if value is None and optional:
            return None
        return layer_spec(value, self.key(name), ACTIVATIONS)

    def norm(self, name: str, allowed: frozenset, default: Any = _REQUIRED):
        value = self.get(name, default)
        if value is None:
            return None
        spec = layer_spec(value, self.key(name), allowed)
        if spec_name(spec) == "group" and "num_groups" not in spec_args(spec):
            raise ConfigError(f"{self.key(name)}: GroupNorm needs num_groups, e.g. [\"group\", {{\"num_groups\": 2}}]")
        return spec

    def adn_ordering(self, name: str = "adn_ordering", default: Any = "NDA") -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or set(value) - set("ADN") or len(set(value)) != len(value):
            raise ConfigError(f"{self.key(name)} must be letters among A, D, N without repeats, got {value!r}")
        return value


def positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def layer_spec(value: Any, key: str, allowed: frozenset):
    """"name" or ["name", {arguments}] (JSON has no tuples) -> "name" or ("name", {arguments}), name lower-cased
    (2.0's enums and MONAI's factories ignore case)."""
    if isinstance(value, str):
        name, args = value, None
    elif isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        name, args = value
    else:
        raise ConfigError(f"{key} must be a name or [name, {{arguments}}], got {value!r}")
    if name.lower() not in allowed:
        raise ConfigError(f"{key}: {name!r} is not one of ClinicaDL 2.0's choices ({', '.join(sorted(allowed))})")
    return name.lower() if args is None else (name.lower(), {k: tuples(v) for k, v in args.items()})


def spec_name(spec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def spec_args(spec) -> dict:
    return {} if isinstance(spec, str) else spec[1]


def tuples(value: Any) -> Any:
    """JSON lists back to the tuples 2.0 held (module arguments such as kernel_size=(2, 2))."""
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value


def per_dim(value: Any, dims: int, key: str) -> tuple[int, ...]:
    """An int for every spatial dimension, or one value per dimension (2.0's `ensure_tuple`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * dims
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(value) != dims:
            raise ConfigError(f"{key} must have {dims} values (one per spatial dimension), got {list(value)}")
        return tuple(value)
    raise ConfigError(f"{key} must be an integer or a list of {dims} integers, got {value!r}")


def per_layer(value: Any, dims: int, layers: int, key: str) -> list[tuple[int, ...]]:
    """Conv parameters as 2.0 reads them back from JSON: an int for every layer and dimension, or a list with one
    entry (int or per-dimension list) per layer. A list is always per layer (2.0 writes the expanded form), a tuple
    (Python configs only) one value per dimension for every layer, as 2.0's pydantic union reads them."""
    if isinstance(value, list):
        if len(value) != layers:
            raise ConfigError(f"{key} lists {len(value)} values but there are {layers} convolutional layers")
        return [per_dim(v, dims, key) for v in value]
    return [per_dim(value, dims, key)] * layers
