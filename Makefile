# lungseg: every target creates .venv and installs the project first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch (installed first, so nothing pulls a multi-GB CUDA build); GPU users: make install TORCH=torch
TORCH  ?= torch==2.13.0
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install demo train data check evaluate predict export bench sweep sweep-demo optuna summary results ablations learning-curve gpu-check screenshots test chromium test-browser test-all lint docs tensorboard clean

install: $(BIN)/.installed   ## torch first, then this checkout editable with [dev]: every extra but ray, pytest, ruff, build

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install          ## train briefly on the built-in synthetic sample data (written on first use)
	$(BIN)/python -m lungseg.train +experiment=demo

train: install         ## the original recipe on the Kaggle data (make data first)
	$(BIN)/python -m lungseg.train +experiment=baseline

data: install          ## download the Kaggle dataset into data/lung_mask_dataset (needs Kaggle credentials)
	$(BIN)/python -m lungseg.data.download

check: install         ## validate a dataset folder: make check ROOT=/path
	$(BIN)/python -m lungseg.data.check $(if $(ROOT),data.root=$(ROOT),)

evaluate: install      ## make evaluate CKPT=outputs/<run>/checkpoints/best.ckpt [ROOT=/path] [SPLIT=test]
	$(BIN)/python -m lungseg.evaluate ckpt_path=$(CKPT) $(if $(ROOT),data.root=$(ROOT),) $(if $(SPLIT),split=$(SPLIT),)

predict: install       ## make predict CKPT=outputs/<run>/checkpoints/best.ckpt IN=/scans OUT=/masks
	$(BIN)/python -m lungseg.predict ckpt_path=$(CKPT) input=$(IN) output=$(OUT)

export: install        ## make export CKPT=... [OUT=lungseg.onnx] [FORMAT=onnx|torch_export]
	$(BIN)/python -m lungseg.export ckpt_path=$(CKPT) format=$(or $(FORMAT),onnx) $(if $(OUT),output=$(OUT),)

sweep: install         ## the 8-run grid on the baseline: make sweep [ARGS="hydra/launcher=joblib"]
	$(BIN)/python -m lungseg.train --multirun +experiment=baseline optimizer.lr=1e-4,3e-4 \
	    model.dropout=0.3,0.5 model.noise_std=0.05,0.1 $(ARGS)

sweep-demo: install   ## 8 short demo runs, lr x dropout x noise, on the sample data (about 5 min on 2 cores); prints the summary and the tensorboard command
	$(BIN)/python -m lungseg.train --multirun +experiment=demo trainer.max_epochs=3 data.image_size=64 \
	    model.base_filters=8 data.train_subset=64 optimizer.lr=1e-4,1e-3 model.dropout=0.1,0.5 model.noise_std=0.0,0.1 \
	    ~callbacks.progress_bar $(ARGS)

optuna: install        ## Optuna over lr, dropout, noise: make optuna [TRIALS=20] [ARGS=...]
	$(BIN)/python -m lungseg.train --multirun +experiment=baseline hparams_search=optuna \
	    $(if $(TRIALS),hydra.sweeper.n_trials=$(TRIALS),) $(ARGS)

summary: install       ## make summary SWEEP=outputs/multirun/<date>/<time>
	$(BIN)/python -m lungseg.sweep_summary $(SWEEP)

bench: install         ## throughput of training, inference, data pipeline (make bench ARGS="device=cuda")
	$(BIN)/python -m lungseg.bench $(ARGS)

results: install       ## docs/RESULTS.md: cxr_small x 3 seeds, baseline, cxr_small without deep supervision x 3 on cxr-v7 (about 2.5 h on 2 cores) [CXR=...]
	PYTHON=$(BIN)/python scripts/pipelines/results.sh $(or $(CXR),../shared/data/cxr-v7)

ablations: install     ## the val comparisons behind cxr_small (about 3 h on 2 cores) [CXR=...]
	PYTHON=$(BIN)/python scripts/pipelines/ablations.sh $(or $(CXR),../shared/data/cxr-v7)

learning-curve: install ## cxr_small on 15/30/45/60 training images, scored on val and test (about 70 min a seed on 2 cores) [CXR=...] [SEEDS=...] [SIZES=...]
	PYTHON=$(BIN)/python scripts/pipelines/learning_curve.sh $(or $(CXR),../shared/data/cxr-v7)

gpu-check: install    ## the GPU checks and figures on a CUDA machine: make gpu-check OUT=gpu-out [CXR=...]
	PYTHON=$(BIN)/python bash scripts/pipelines/gpu-check.sh $(or $(OUT),gpu-out) $(or $(CXR),../shared/data/cxr-v7)

screenshots: install chromium  ## docs' screenshots: the sweep's HParams tab (SWEEP=...) and the review page (PRED=...)
	$(BIN)/python -m pip install --quiet playwright
	$(if $(SWEEP),$(BIN)/python scripts/pipelines/sweep_screenshot.py $(SWEEP) docs/figures/sweep_hparams.png,)
	$(if $(PRED),$(BIN)/python scripts/pipelines/review_screenshot.py $(PRED) docs/figures/review.png,)

test: install          ## the fast suite in this CPU's precision, then its precision tests in the other one (bf16 emulated on AVX2)
	$(BIN)/python -m pytest -m "not slow" -q
	$(BIN)/python -m pytest -m "precision and not slow" -q --cpu-precision=other

chromium:              ## Debian's Chromium for the browser tests (apt as root; Playwright's own browser download is not used)
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	    else echo "no chromium: sudo apt-get install chromium (Debian/Ubuntu), then make test-browser again"; exit 1; fi; }

test-browser: install chromium  ## the HParams tab of a real sweep and the review page in headless Chromium (installs playwright)
	$(BIN)/python -m pip install --quiet playwright
	$(BIN)/python -m pytest -q tests/test_sweep_browser.py tests/test_review_browser.py

test-all: install      ## every test, including the slow real-data training
	$(BIN)/python -m pytest -q

lint: install          ## what CI checks besides the tests: format, lint, the layer contracts, the docs site
	$(BIN)/ruff format --check lungseg tests scripts
	$(BIN)/ruff check lungseg tests scripts
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: install          ## the docs site into build/site (strict: a broken link or a page left out fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

tensorboard: install
	$(BIN)/tensorboard --logdir outputs

clean:
	rm -rf outputs/*/ .pytest_cache
