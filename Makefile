# carlib: `make demo` runs the studies on the embedded data; `make test` runs every test.
# Both create .venv and install carlib with its pinned dependencies first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.carlib-installed
BUILD  := build
# Where `make demo` writes its results store, executed notebooks and plots (all git-ignored).
DEMO_RESULTS := results
DEMO_STUDIES := lr_study augmentation_study backbone_study tta_visualization
# Two trials at once on 2 cores: one trial's kernel start, data loading and evaluation overlap the other's
# training (a 6-trial sweep: 3 min 3 s -> 2 min 17 s, the same accuracies). The speed columns
# (train_images_per_s, epoch_s) then measure a shared CPU: equally for every arm, not the machine's speed.
DEMO_WORKERS := 2
# Each study runs --until-decisive (issue 22): seeds in rounds until its anytime-valid verdict is clear, at most
# DEMO_MAX_SEEDS per arm (a clear study stops after 2, an unclear one at the cap: 4 to 6 trials a study).
DEMO_MAX_SEEDS := 3

export TF_CPP_MIN_LOG_LEVEL ?= 3
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install data test unit-test notebook-test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "carlib needs Python >= 3.11, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev,ray,pretrained,mlflow]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (carlib)" >/dev/null
	touch $(STAMP)

data: install
	$(PY) -m carlib data generate

# The tests run in TEST_WORKERS processes (pytest-xdist), each test file in one of them (--dist loadfile: a file's
# module fixtures are built once, and the Ray tests never start two clusters at once). Most tests spend their time in
# one Python thread building and tracing small models, so a second process on a second core cuts the suite by a
# third (17 min to 11½ on 2 cores).
# TEST_WORKERS=0 runs them in this process (what a debugger wants).
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

unit-test: install
	$(PY) -m pytest $(XDIST) tests/

# nbval runs each notebook in its own folder with its default (tiny) parameters, in this
# interpreter's environment; its results go to an ignored folder, not notebooks/. A kernel may take
# minutes to start on a busy 2-core machine: nbval waits up to KERNEL_START_TIMEOUT seconds.
KERNEL_START_TIMEOUT := 600
notebook-test: install
	CARLIB_RESULTS_DIR=$(abspath $(BUILD))/nbval-results $(PY) -m pytest $(XDIST) --nbval-lax --nbval-current-env \
	  --nbval-kernel-startup-timeout $(KERNEL_START_TIMEOUT) notebooks/

test: unit-test notebook-test

# The demo runs each study's quick sweep (2 arms, seeds until decisive, at most 3, on the embedded data), then the
# report.
demo: data
	@for study in $(DEMO_STUDIES); do \
	  echo "== $$study: carlib sweep params/$$study/sweep-quick.yaml --until-decisive --max-seeds $(DEMO_MAX_SEEDS)"; \
	  $(PY) -m carlib sweep params/$$study/sweep-quick.yaml --until-decisive --max-seeds $(DEMO_MAX_SEEDS) \
	    --results-dir $(DEMO_RESULTS) --workers $(DEMO_WORKERS) || exit 1; \
	done
	@echo; echo "== Combined results table ($(DEMO_RESULTS)/)"
	@$(PY) -m carlib results --results-dir $(DEMO_RESULTS)
	@$(PY) -m carlib report --results-dir $(DEMO_RESULTS) --out $(BUILD)/report.html >/dev/null
	@echo; echo "Report:             $(BUILD)/report.html"; \
	 echo "Executed notebooks: $(DEMO_RESULTS)/notebooks/<trial_id>.ipynb (and .log)"; \
	 echo "Plots and models:   $(DEMO_RESULTS)/runs/<run_id>/ (learning_curves.png, history.csv, best.keras, last.keras)"

clean:
	rm -rf $(BUILD) $(VENV)
