"""ClinicaDL 2.0.0's own code, imported as a test oracle (requirements/oracles.txt).

ClinicaDL 2.0 imports torchvision (for its pretrained-weight enums and ViT's MLP block). The torchvision wheel
on PyPI is built against CUDA torch; beside the CPU torch its compiled ops cannot load, and torchvision's
import then fails while registering fake kernels for them (`torchvision::nms does not exist`). Those kernels
are irrelevant to networks and transforms, so the module that registers them is skipped; every Python class
ClinicaDL uses is torchvision's real one.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest


def import_clinicadl2():
    """The `clinicadl` package (2.0.0), or a skip when it is not installed (CI installs it: `make setup`)."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clinicadl = pytest.importorskip("clinicadl")
        from clinicadl.data.datasets.factory import get_dataset_from_json  # noqa: F401 (loads the submodules)
        from clinicadl.networks.factory import get_network_from_dict  # noqa: F401
    if getattr(clinicadl, "__version__", "2.0.0") != "2.0.0":
        pytest.skip(f"clinicadl {clinicadl.__version__} installed; the oracle is 2.0.0")
    return clinicadl


def network(config: dict):
    """ClinicaDL 2.0's own network for a model.json `network` config."""
    import_clinicadl2()
    from clinicadl.networks.factory import get_network_from_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_network_from_dict(config).get_object()
