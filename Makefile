# `make demo` runs the built-in example; `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# On Linux, PyPI's torch wheels pull several GB of CUDA libraries: torch comes from
# PyTorch's CPU index instead (a local wheel or index that serves it is used as well;
# its dependencies come with the next install).
# `make TORCH_INDEX= ...` takes torch from the usual index.
TORCH_INDEX ?= $(if $(filter Linux,$(shell uname -s)),https://download.pytorch.org/whl/cpu)

.PHONY: demo test lint bench bench-peers clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install -q --retries 1 --no-deps -c constraints.txt torch --extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	VENV=$(VENV) bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_kql.py
	$(PY) benchmarks/bench_merge.py

# Benchmarks against the peers' own loaders (LeRobot, robomimic) in .venv-bench, plus
# serving and inference; see docs/benchmarks.md.
bench-peers: $(STAMP)
	bash benchmarks/setup_peers.sh
	.venv-bench/bin/python benchmarks/dataloader.py
	.venv-bench/bin/python benchmarks/training.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/infer.py

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache
