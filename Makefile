# Each target is idempotent and works on a fresh machine (Python 3.11, gcc, cmake, pip; no torch).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo
SOURCES := $(shell find csrc pysrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' \)) \
           CMakeLists.txt pyproject.toml

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# Dependencies first (torch pinned in requirements/torch.txt), then the package built against that torch.
$(VENV)/.deps: requirements/torch.txt requirements/build.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt -r requirements/build.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(BIN)/pip install --quiet --no-build-isolation '.[test]'
	touch $@

demo: setup
	$(BIN)/python -m maps_interpret.synthetic demo $(DEMO)
	$(BIN)/maps-interpret $(DEMO)/maps test demo gradients \
	    --participants_tsv $(DEMO)/data/test.tsv --caps_directory $(DEMO)/data/caps \
	    --save_individual --save_nifti --no-gpu
	@echo "Maps written under $(DEMO)/maps/split-*/best-loss/test/interpret-demo/"

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build $(VENV) $(DEMO)
