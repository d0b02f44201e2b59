"""The attribution methods: one table from which everything else is derived.

Each `Method` row says what the command calls it, which C++ method computes it (csrc/methods/), which
parameters it reads, whether its maps are averaged over noisy copies (the noise tunnel, csrc/methods/
noise_tunnel.cpp, which wraps any method as Captum's NoiseTunnel does), and how the network is handed to
C++. From the table come: the METHOD choices and `--help` (config.py), one option per parameter with its
check (config.py, `check_parameters`), the parameters recorded in interpret.json and in a checkpoint's
fingerprint (output/provenance.py, runner/checkpoints.py), the engine's options (`core_options`), and the
options reference (docs/options.md). Adding a method: a row here, one C++ file, its tests
(docs/ARCHITECTURE.md, "Adding a method").

No torch here: the CLI's --help imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from .errors import UsageError

# lrp's composites (models/lrp.py defines them; listed here, where no torch is imported, for the options).
LRP_COMPOSITES = ("epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-plus", "epsilon-alpha2-beta1",
                  "epsilon-gamma-box")


@dataclass(frozen=True)
class Parameter:
    """A method parameter: the option `--<name>`, the InterpretConfig field `<name>` and the key the C++
    method reads (`EngineOptions.parameters[name]`)."""

    name: str
    type: type  # int, float or str
    default: Any
    metavar: str
    help: str
    minimum: Optional[float] = None  # smallest value allowed; None: any
    optional: bool = False  # None is allowed (and is the default)
    choices: Optional[tuple] = None  # a str parameter's values

    def check(self, value: Any, error: type[Exception] = UsageError) -> None:
        if value is None and self.optional:
            return
        if self.type is str:
            if value not in (self.choices or ()):
                raise error(f"--{self.name} must be one of {', '.join(self.choices or ())}, got {value!r}")
            return
        numeric = (int,) if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            kind = "an integer" if self.type is int else "a number"
            raise error(f"--{self.name} must be {kind}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            bound = f"at least {self.minimum:g}" if self.minimum > 0 else f"{self.minimum:g} or more"
            raise error(f"--{self.name} must be {bound}, got {value}")


PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    Parameter("n_samples", int, 16, "N", "smoothgrad and --noise_tunnel: noisy copies of each image (default: 16).",
              minimum=1),
    Parameter("noise_level", float, 0.1, "F", "smoothgrad and --noise_tunnel: the noise's standard deviation as a "
              "fraction of each image's value range (default: 0.1).", minimum=0),
    Parameter("n_steps", int, 50, "N", "integrated-gradients: steps from the baseline (default: 50).", minimum=1),
    Parameter("baseline", float, 0.0, "F", "integrated-gradients and occlusion: the baseline image's constant value "
              "(default: 0, a black image); occlusion's patches take it."),
    Parameter("chunk_size", int, 0, "N", "smoothgrad, integrated-gradients, occlusion, --noise_tunnel: copies per "
              "forward pass, the memory of one (default: --batch_size).", minimum=0),
    Parameter("seed", int, 0, "N", "smoothgrad and --noise_tunnel: seed of the noise (default: 0); the same seed "
              "gives the same maps whatever the batches, ranks or parts."),
    Parameter("occlusion_size", int, 16, "N", "occlusion: the patch's size in voxels along each spatial axis "
              "(default: 16).", minimum=1),
    Parameter("occlusion_stride", int, None, "N", "occlusion: how far the patch moves, at most its size "
              "(default: the patch's size, patches side by side).", minimum=1, optional=True),
    Parameter("lrp_composite", str, "epsilon-plus-flat", "NAME", "lrp: which rule each layer gets, as Zennit's "
              "composite of that name: epsilon-plus-flat (default: z+ for convolutions, epsilon for dense layers, "
              "flat for the first layer), epsilon-alpha2-beta1-flat, epsilon-plus, epsilon-alpha2-beta1, "
              "epsilon-gamma-box (gamma 0.25 for convolutions, z^B within each image's minimum and maximum for "
              "the first).", choices=LRP_COMPOSITES),
    Parameter("level_grad_cam", int, None, "INT", "Grad-CAM and Grad-CAM++: the feature map is taken after this "
              "many modules of the network's `convolutions` (default: after all of them).", minimum=1, optional=True),
)}

# What the noise tunnel reads (csrc/methods/noise_tunnel.cpp), whatever method it wraps.
TUNNEL_PARAMETERS = ("n_samples", "noise_level", "seed", "chunk_size")


@dataclass(frozen=True)
class Method:
    name: str  # as the command spells it
    summary: str  # one line: the map it computes
    core: str  # the C++ method (csrc/methods/<core>.cpp registers it)
    parameters: tuple[str, ...] = ()  # of PARAMETERS, read by this method
    noise_tunnel: bool = False  # always averaged over noisy copies (smoothgrad: gradients in the tunnel)
    options: tuple[str, ...] = ()  # general options that change its maps (recorded with its parameters)
    # "fused": the cost-only rewrite (models/fast.py); "cam": trunk + head (models/export.py); "lrp": the relevance
    # network (models/lrp.py); "staged": leading local layers split out (models/staged.py)
    export: str = "fused"
    reference: str = ""
    # The values the C++ method reads, from the resolved parameter values and general options (default: its own
    # parameters, by name).
    core_parameters: Optional[Callable[[Mapping[str, Any]], dict]] = None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradients", "the gradient of the target output with respect to each voxel (ClinicaDL's)", "gradients",
           reference="Simonyan et al. 2014"),
    Method("grad-cam", "the class activation map of a feature map, upsampled to the image", "grad-cam",
           parameters=("level_grad_cam",), options=("compat",), export="cam", reference="Selvaraju et al. 2017",
           core_parameters=lambda values: {"variant": "clinicadl" if values.get("compat") == "clinicadl"
                                           else "published"}),
    Method("grad-cam++", "Grad-CAM with each position's positive gradient weighted (alpha) instead of the mean "
           "gradient", "grad-cam", parameters=("level_grad_cam",), export="cam",
           reference="Chattopadhyay et al. 2018", core_parameters=lambda values: {"variant": "plusplus"}),
    Method("input-x-gradient", "the input times its gradient", "input-x-gradient", reference="Shrikumar et al. 2016"),
    Method("smoothgrad", "the gradient averaged over noisy copies of the image", "gradients", noise_tunnel=True,
           reference="Smilkov et al. 2017"),
    Method("integrated-gradients", "the gradient integrated along the path from a constant baseline, times the "
           "difference (the map sums to f(x) - f(baseline))", "integrated-gradients",
           parameters=("n_steps", "baseline", "chunk_size"), reference="Sundararajan et al. 2017"),
    Method("lrp", "layer-wise relevance propagation: the target's relevance passed back layer by layer by "
           "Zennit's composite rules", "gradients", parameters=("lrp_composite",), export="lrp",
           reference="Bach et al. 2015; Montavon et al. 2019", core_parameters=lambda values: {}),
    Method("occlusion", "the target output's drop when a patch of the image takes the baseline value, averaged "
           "over the patches that cover each voxel (Captum's definition)", "occlusion",
           parameters=("occlusion_size", "occlusion_stride", "baseline", "chunk_size"), export="staged",
           reference="Zeiler and Fergus 2014",
           core_parameters=lambda values: {"occlusion_size": values["occlusion_size"],
                                           "occlusion_stride": values["occlusion_stride"] or values["occlusion_size"],
                                           "baseline": values["baseline"], "chunk_size": values["chunk_size"]}),
)}
DEFAULT_METHOD = "gradients"


def method(name: str, error: type[Exception] = UsageError) -> Method:
    """The row of `name`; an unknown name raises `error` listing the others."""
    try:
        return METHODS[name]
    except KeyError:
        raise error(f"METHOD '{name}' is not supported: choose one of {', '.join(METHODS)}") from None


def reads(row: Method, noise_tunnel: bool) -> tuple[str, ...]:
    """The parameters a method reads, with the noise tunnel's when its maps go through it."""
    tunnel = TUNNEL_PARAMETERS if row.noise_tunnel or noise_tunnel else ()
    return tuple(dict.fromkeys((*row.parameters, *tunnel)))


def check_parameters(values: Mapping[str, Any], error: type[Exception] = UsageError) -> None:
    """Each given parameter within its range (the one check of each value); unknown names are refused."""
    for name, value in values.items():
        if name not in PARAMETERS:
            raise error(f"unknown method parameter {name!r}: the parameters are {', '.join(PARAMETERS)}")
        PARAMETERS[name].check(value, error)
    size, stride = values.get("occlusion_size"), values.get("occlusion_stride")
    if size is not None and stride is not None and stride > size:
        raise error(f"--occlusion_stride {stride} is larger than --occlusion_size {size}: voxels between the "
                    "patches would be left out; use a stride of at most the size")


def check_amp(row: Method, amp: bool, error: type[Exception] = UsageError) -> None:
    if amp and row.core == "occlusion":
        raise error(f"{row.name} with --amp: its map is the difference of two outputs, which bfloat16 or float16 "
                    "rounding hides (a test network's maps correlated 0.07 with float32 ones); remove --amp")


def check_noise_tunnel(row: Method, noise_tunnel: bool, error: type[Exception] = UsageError) -> None:
    if noise_tunnel and row.noise_tunnel:
        raise error(f"{row.name} already averages over noisy copies: remove --noise_tunnel")


def core_options(row: Method, values: Mapping[str, Any], noise_tunnel: bool) -> tuple[str, dict, bool]:
    """What the C++ engine is given: its method's name, the parameters it reads (by name) and whether the
    maps go through the noise tunnel. `values` holds every parameter of `reads(row, noise_tunnel)` and the
    method's general `options`."""
    tunnel = row.noise_tunnel or noise_tunnel
    own = (row.core_parameters(values) if row.core_parameters is not None
           else {name: values[name] for name in row.parameters})
    if tunnel:
        own.update({name: values[name] for name in TUNNEL_PARAMETERS})
    return row.core, own, tunnel


def help_text() -> str:
    """METHOD's help: every method with what it maps."""
    return "Attribution method: " + "; ".join(
        f"{m.name}{' (default)' if m.name == DEFAULT_METHOD else ''}: {m.summary}" for m in METHODS.values()) + "."
