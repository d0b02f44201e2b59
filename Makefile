# Each target is idempotent and works on a fresh machine (Python 3.11, gcc, cmake, pip; no torch).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo
WHEELHOUSE ?= build/wheelhouse
SOURCES := $(shell find csrc pysrc buildtools -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' \)) \
           CMakeLists.txt pyproject.toml

.PHONY: setup demo test docs bench clean wheel wheelhouse test-wheel test-container test-slow

setup: $(VENV)/.installed

# Dependencies first (torch pinned in requirements/torch.txt), then the package built against that torch.
$(VENV)/.deps: requirements/torch.txt requirements/build.txt requirements/oracles.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt -r requirements/build.txt
	$(BIN)/pip install --quiet -r requirements/torch.txt -r requirements/oracles.txt
	$(BIN)/pip install --quiet --no-deps clinicadl==2.0.0
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(BIN)/pip install --quiet --no-build-isolation '.[test]'
	touch $@

demo: setup
	$(BIN)/python -m maps_interpret.synthetic demo $(DEMO)
	$(BIN)/maps-interpret $(DEMO)/maps test demo gradients \
	    --participants_tsv $(DEMO)/data/test.tsv --caps_directory $(DEMO)/data/caps \
	    --save_individual --save_nifti --save_figures --statistics --group_by diagnosis --sanity_check --no-gpu
	$(BIN)/maps-interpret $(DEMO)/clinicadl2 test demo gradients --save_individual --save_nifti --save_figures --no-gpu
	@echo "Maps written under $(DEMO)/maps/split-*/best-loss/test/interpret-demo/; the run's report (open it in a"
	@echo "browser): $(DEMO)/maps/reports/test/interpret-demo.html; for the ClinicaDL 2.0 output:"
	@echo "$(DEMO)/clinicadl2/reports/test/interpret-demo.html"

test: setup
	$(BIN)/python -m pytest -q

# The options reference, generated from the commands' parsers and the method table (tests/test_docs.py checks it).
docs: setup
	$(BIN)/python -m maps_interpret.cli.reference > docs/options.md.tmp
	mv docs/options.md.tmp docs/options.md

# A wheel of the package compiled against the pinned torch, which its metadata then asks for (==).
wheel: setup
	rm -f dist/maps_interpret-*.whl
	$(BIN)/pip wheel --quiet --no-build-isolation --no-deps -w dist .

# Every wheel that installing the package, or building its container image, needs: offline installs.
wheelhouse: wheel
	rm -f $(WHEELHOUSE)/maps_interpret-*.whl
	$(BIN)/pip download --quiet -d $(WHEELHOUSE) dist/maps_interpret-*.whl -r requirements/build.txt

# Packaging tests (minutes; .ci/run runs them after `make test`).
test-wheel: wheelhouse
	$(BIN)/python -m pytest -q tests/packaging/test_wheel.py

test-container: wheelhouse
	$(BIN)/python -m pytest -q -s tests/packaging/test_container.py  # -s: prints the time of each step

test-slow: test-wheel test-container

# Side by side with ClinicaDL's loop (run.py), then the whole command on a near-free model against the read floor
# (probe.py, 256 full-size sessions: 6.4 GB under bench-out/), checkpoints and torchrun (distributed.py), and
# the attribution methods against gradients (methods.py).
bench: setup
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/probe.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/methods.py

clean:
	rm -rf build $(VENV) $(DEMO)
