# medseg — two commands do everything on a fresh machine:
#   make demo   built-in synthetic BraTS-like data -> prepare, train, evaluate, export, predict
#   make test   the test suite
# Both create (or reuse) the project venv .venv and install medseg with the pins in constraints.txt.

PYTHON      ?= python3
VENV        ?= .venv
CONSTRAINTS ?= constraints.txt
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow venv judges clean bench bench-compare bench-peers docker-test chromium validators ci-tools viewer \
	gpu-check bench-ttq

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

# The outside judges that run in their own processes (MONAI's bundle runner, the Optuna sweeper;
# tests/judges.txt) go into .venv-judges, a venv layered on .venv: a .pth file adds .venv's
# site-packages (medseg included), so pip installs only what .venv lacks. In .venv they would cost
# every medseg process ~3 s of start-up (`import monai` imports pytorch-ignite and optuna if present).
JUDGES       := .venv-judges
JUDGES_STAMP := $(JUDGES)/.installed
PURELIB      := -c 'import sysconfig; print(sysconfig.get_path("purelib"))'

$(JUDGES_STAMP): $(STAMP) tests/judges.txt
	test -x $(JUDGES)/bin/python || $(PYTHON) -m venv $(JUDGES)
	echo "import site; site.addsitedir('$$(realpath $$($(BIN)/python $(PURELIB)))')" \
	  > "$$($(JUDGES)/bin/python $(PURELIB))/medseg_venv.pth"
	$(JUDGES)/bin/python -m pip install --quiet -c $(CONSTRAINTS) -r tests/judges.txt
	touch $(JUDGES_STAMP)

judges: $(JUDGES_STAMP)

demo: $(STAMP)
	$(BIN)/medseg run experiment=demo

test: $(STAMP) $(JUDGES_STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) $(JUDGES_STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/prepare.py
	$(BIN)/python bench/plan_memory.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/train_vs_monai.py --repeats 2

# nnU-Net v2 in its own venv (.venv-peers) for bench/compare.py; torch pinned like the project venv.
bench-peers:
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0 nnunetv2

# medseg vs the MONAI tutorial recipe (and nnU-Net v2 if `make bench-peers` ran); rewrites the
# comparison section of docs/performance.md.
bench-compare: $(STAMP)
	$(BIN)/python bench/compare.py --write-docs

# The CUDA paths in a few minutes on one GPU machine (amp training, NCCL DDP, fp16/bf16 labels vs fp32,
# throughput and peak memory); exits non-zero on a mismatch. Without a GPU: a CPU dry run, exit 0.
gpu-check: $(STAMP)
	bash bench/gpu_check.sh

# Dice per minute: medseg with the budget-aware schedule (cosine, and warmup-stable-decay), with the
# schedule sized for max_epochs, and the MONAI tutorial recipe at 60, 180 and 600 s of training, 12
# held-out test cases (about 65 min on 2 cores; add SEEDS=0,1 for replicates of the medseg arms);
# draws docs/time_to_quality.png.
SEEDS ?=
bench-ttq: $(STAMP)
	$(BIN)/python bench/time_to_quality.py --budgets 60,180,600 --cases 32 --test-cases 12 --threads 2 \
	  --png docs/time_to_quality.png $(if $(SEEDS),--seeds $(SEEDS))

# Builds the CPU image and runs the batch job offline on built-in cases (needs a Docker engine or
# Debian's docker.io; see docker/test.sh). Not part of `make test`.
docker-test: $(STAMP)
	bash docker/test.sh

# Headless Chromium renders the HTML report to PNG in tests/test_evaluation.py (skipped without it).
chromium:
	command -v chromium || command -v chromium-browser || command -v google-chrome || \
	  (apt-get update && apt-get install -y chromium)

# NiiVue (the @niivue/niivue npm package) for the interactive viewer in report.html and review.html,
# installed into the environment, outside the repository (medseg finds it there, or at $MEDSEG_NIIVUE_JS).
NIIVUE_VERSION ?= 0.69.0
viewer: $(STAMP)
	npm install --prefix $(VENV)/share/medseg-viewer --no-save --no-audit --no-fund --ignore-scripts \
	  @niivue/niivue@$(NIIVUE_VERSION)

# DICOM validators for tests/test_dicom_validators.py (skipped without them): dicom3tools' dciodvfy
# (Debian) and dcmqi's segimage2itkimage (pip; Linux x86_64 wheels only, so not in the test extra).
validators: $(STAMP)
	command -v dciodvfy || (apt-get update && apt-get install -y dicom3tools)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) 'dcmqi>=1.5'
	$(BIN)/segimage2itkimage --version

# The outside judges CI installs before `make test` (best effort: their tests skip without them).
ci-tools: validators chromium viewer

clean:
	rm -rf outputs multirun .cache data/demo .pytest_cache
