# fer-mtl: `make demo` and `make test` set up .venv on first use.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench-layers bench-methods bench-input bench-synthesis clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m pipeline.cli demo

test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-layers: setup
	$(PY) benchmarks/bench_layers.py

bench-methods: setup
	$(PY) benchmarks/bench_methods.py

bench-input: setup
	$(PY) benchmarks/bench_input.py

bench-synthesis: setup
	$(PY) benchmarks/bench_synthesis.py

clean:
	rm -rf out runs tfx_root .pytest_cache
