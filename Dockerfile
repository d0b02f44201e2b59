# maps-interpret on a CUDA PyTorch image.
#
#   docker build -t maps-interpret .                                   # online: wheels from PyPI
#   docker build --build-arg WHEELS=build/wheelhouse -t maps-interpret .   # offline: `make wheelhouse` first
#
# BASE_IMAGE: any image whose `python` has torch (CUDA or CPU build) and can install packages with pip.
# The default is PyTorch's own runtime image of the torch this project pins (requirements/torch.txt):
#  - runtime, not devel: the C++ core compiles against torch's headers and libraries alone (no nvcc, no CUDA
#    toolkit, see CMakeLists.txt), so only g++ is added, and only in the throw-away build stage;
#  - CUDA 12.8 rather than 13: it runs on drivers >= 525 (minor-version compatibility), which most clusters
#    have, and covers every GPU from Volta to Blackwell. Use a cuda13 tag if your driver is >= 580.
# The tag follows PyTorch's naming; it could not be pulled where this file is tested (no registry), where a
# local Debian + torch stand-in is built instead (tests/packaging/test_container.py).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# ---- build: compile the core against the base image's own torch ------------------------------------------
FROM ${BASE_IMAGE} AS build
# WHEELS: a folder of the build context holding every wheel needed (empty: use the package index).
ARG WHEELS=""
USER root
RUN command -v g++ >/dev/null || { \
        apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; }
COPY . /src
WORKDIR /src
# The build tools go into the build stage only; torch is the image's (no build isolation, --no-deps).
RUN set -eu; \
    if [ -n "$WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="/src/$WHEELS"; fi; \
    python -c 'import torch; print("torch==" + torch.__version__)' > /torch-constraint.txt; \
    python -m pip install --no-cache-dir -c /torch-constraint.txt -r requirements/build.txt; \
    python -m pip wheel --no-cache-dir --no-build-isolation --no-deps -w /dist .

# ---- final: the base image plus the package, run as a non-root user ---------------------------------------
FROM ${BASE_IMAGE}
ARG WHEELS=""
USER root
# The constraint keeps the image's torch: pip may add the package's other dependencies but never swap torch.
RUN --mount=type=bind,from=build,source=/,target=/stage set -eu; \
    if [ -n "$WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="/stage/src/$WHEELS"; fi; \
    python -m pip install --no-cache-dir -c /stage/torch-constraint.txt /stage/dist/maps_interpret-*.whl; \
    python -c 'import torch, maps_interpret.engine as e; print("maps-interpret core OK with torch", torch.__version__)'; \
    maps-interpret --help >/dev/null
# A default non-root user; `docker run --user $(id -u):$(id -g)` runs as the owner of a mounted study instead,
# so the maps it writes belong to that user. Any uid works: HOME and caches point to /tmp, writable by all.
RUN getent passwd 1000 >/dev/null || useradd --uid 1000 --create-home --shell /bin/sh maps
ENV HOME=/tmp XDG_CACHE_HOME=/tmp/.cache PYTHONUNBUFFERED=1
USER 1000
WORKDIR /data
ENTRYPOINT ["maps-interpret"]
CMD ["--help"]
