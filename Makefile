# Two commands on a fresh machine:  make demo   |   make test
# GPU users: install your CUDA torch into .venv first, or pass TORCH="torch==<your version>".
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/janus: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/janus

.PHONY: setup demo test lint bench browser floors
setup: $(BIN)/janus

# The report's test opens it in headless Chromium (Debian's package); installed when possible.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >/dev/null; \
	  else echo "chromium not found and cannot be installed here: the report's browser test will be skipped"; fi; }

demo: setup
	$(BIN)/janus demo

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_synth.py

# The lowest transformers and diffusers pyproject allows, overlaid on the venv for the tests that
# exercise them (docs/models.md, "Dependency floors"). Needs the package index, not a GPU.
FLOORS ?= transformers==5.18.0 diffusers==0.35.2
floors: setup
	rm -rf build/floors
	$(BIN)/pip install -q --no-deps --target build/floors $(FLOORS)
	PYTHONPATH=build/floors $(BIN)/pytest -p no:cacheprovider tests/test_fast_loop.py tests/test_janus_loop.py \
	  tests/test_tiny_models.py tests/test_judge_hf.py tests/test_sft.py tests/test_kv_cache_keyword.py tests/test_flux_generator.py \
	  tests/test_generate.py tests/test_detect.py tests/test_geneval.py tests/test_edit_generation.py \
	  tests/test_grpo_edit.py tests/test_sft_edit.py tests/test_edit_judge.py tests/test_generate_edit.py
