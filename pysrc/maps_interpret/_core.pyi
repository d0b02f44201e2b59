"""Type stubs of the compiled module (csrc/bindings.cpp). Import it after torch.

Every call releases the GIL while it computes (an engine has its own lock: threads may share it). Errors raised
in C++ arrive as EngineError, without the C++ backtrace: one line for the core's checks; an op that failed
inside the model's forward pass also carries the TorchScript traceback (errors.first_line keeps its last line).
"""

from typing import Optional, Union

import torch

def built_against() -> str: ...
def format_check(n: int) -> str: ...
def raise_check(n: int) -> None: ...  # raises EngineError("n=<n> x=0.5")
def methods() -> list[str]:
    """The attribution methods registered in the C++ core (csrc/methods/), sorted."""

SUBSET_STRIDE: int  # subset s of element e is kept under key (s + 1) * SUBSET_STRIDE + e; element ids < it

class EngineError(RuntimeError): ...

ParameterValue = Union[bool, int, float, str]

class EngineOptions:
    device: str  # cpu, cuda, cuda:N
    method: str  # one of methods()
    # The method's and the noise tunnel's parameters by name: the noise tunnel n_samples (int), noise_level
    # (float), seed (int), chunk_size (int, 0: the batch size); integrated-gradients n_steps (int), baseline
    # (float), chunk_size (int); grad-cam variant ("published" | "clinicadl"). An int is accepted for a float.
    # Assign a whole dict: the attribute returns a copy, so changing an item in place changes nothing.
    parameters: dict[str, ParameterValue]
    noise_tunnel: bool  # average the method over noisy copies of each sample
    target: int  # the output node of target_mode "node"
    target_mode: str  # node | given | predicted
    amp: str  # none | bfloat16 | float16
    deterministic: bool
    count_zeros: bool
    abs: bool
    statistics: bool
    group_by: str  # none | given | predicted | correct
    def __init__(self) -> None: ...

class Engine:
    def __init__(self, module: torch._C.ScriptModule, options: EngineOptions) -> None: ...
    @staticmethod
    def from_file(path: str, options: EngineOptions) -> Engine: ...
    def attribute(self, batch: torch.Tensor, targets: list[int] = ..., seeds: list[int] = ...) -> torch.Tensor:
        """The maps of `batch` only: no sums are touched (zeros are counted with count_zeros)."""
    def outputs(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's outputs, forward only (no graph), float32, on the engine's device."""
    def accumulate(self, batch: torch.Tensor, ids: list[int], return_maps: bool = False, targets: list[int] = ...,
                   seeds: list[int] = ..., subsets: list[int] = ...,
                   labels: list[int] = ...) -> Optional[torch.Tensor]: ...
    def reserve(self, ids: list[int]) -> None: ...
    def restore(self, subsets: bool, ids: list[int], counts: list[int], sums: torch.Tensor,
                abs_sums: Optional[torch.Tensor] = None, mean64: Optional[torch.Tensor] = None,
                m2: Optional[torch.Tensor] = None) -> None: ...
    def ids(self, subsets: bool = False) -> list[int]: ...
    def counts(self, subsets: bool = False) -> list[int]: ...
    def sums(self, subsets: bool = False) -> torch.Tensor: ...
    def abs_sums(self, subsets: bool = False) -> torch.Tensor: ...
    def welford_means(self, subsets: bool = False) -> torch.Tensor: ...
    def m2(self, subsets: bool = False) -> torch.Tensor: ...
    def means(self) -> torch.Tensor: ...
    def last_subsets(self) -> list[int]: ...
    def zero_fraction(self) -> float: ...
    @property
    def device(self) -> str: ...
