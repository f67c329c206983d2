# Every target creates/refreshes the local virtual environment first, so a new user types nothing else.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU build of torch is installed first (on this project's machines it lies on local disk).
# A GPU user can run `make TORCH_SPEC=torch ...` or install their CUDA torch into the venv beforehand:
# an already importable torch is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.crossgraft-installed
DEMO_OUT ?= runs/demo

.PHONY: venv demo ablation-demo llava-demo serve-demo test test-fast lint bench-metrics bench-train bench-llava bench-deploy bench-deepspeed browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,deploy,serve,lora,deepspeed]"
	@touch $(STAMP)

demo: venv
	$(PY) -m crossgraft anomaly demo --out $(DEMO_OUT)

ablation-demo: venv
	$(PY) -m crossgraft anomaly ablation-demo --out runs/ablation

# the web page on the demo's model (trained first when it is not there): http://127.0.0.1:7860
serve-demo: venv
	@test -f $(DEMO_OUT)/run/image_adapter.pth || $(PY) -m crossgraft anomaly demo --out $(DEMO_OUT)
	$(PY) -m crossgraft anomaly serve --save_path $(DEMO_OUT)/run --device cpu

llava-demo: venv
	$(PY) -m crossgraft llava demo --out runs/llava-demo

# Debian's Chromium for the web page's browser test (skipped with its reason when none can be installed)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the browser test will be skipped" )

test: venv browser
	$(PY) -m pytest

# the fast loop: everything but the tests marked slow (processes, kills, demos, exports, the browser)
test-fast: venv
	$(PY) -m pytest -m "not slow"

# ruff (lint and format) and mypy, as .ci/run runs them before the tests
lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench-metrics: venv
	$(PY) benchmarks/metrics_bench.py

bench-train: venv
	$(PY) benchmarks/train_bench.py

bench-llava: venv
	$(PY) benchmarks/llava_bench.py

bench-deepspeed: venv
	$(PY) benchmarks/deepspeed_bench.py

bench-deploy: venv
	$(PY) benchmarks/deploy_bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache
