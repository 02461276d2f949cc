# kdq — the two README commands (`make demo`, `make test`) and the stages of the demo as targets.
# `make -n demo` prints the exact commands, to run by hand on your own data.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/embedded
RUNS ?= runs/demo
ARCH ?= vgg_tiny
DEVICE ?= cpu
SEED ?= 0
TEACHER_EPOCHS ?= 20
LABEL_EPOCHS ?= 20
PYTEST_ARGS ?=

.PHONY: demo test test-quick venv clean-demo help

help:
	@echo "make demo   run the study on the embedded dataset (CPU)"
	@echo "make test   run the whole test suite (make test-quick skips the slow end-to-end tests)"

# ---- environment -------------------------------------------------------------------------------
$(VENV)/.kdq-requirements: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.kdq-requirements
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

# ---- tests ---------------------------------------------------------------------------------------
test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-quick: venv
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ---- the demo pipeline: each stage is a file target, so an interrupted demo resumes ---------------
$(DATA)/dataset.json: | venv
	$(PY) function/make_dataset.py --out $(DATA) --seed $(SEED) --overwrite

$(RUNS)/teacher/run.json: $(DATA)/dataset.json
	$(PY) train_net/train_net.py --arch $(ARCH) --data $(DATA) --split teacher --val-split val \
		--epochs $(TEACHER_EPOCHS) --lr 0.05 --checkpoints $(TEACHER_EPOCHS) --device $(DEVICE) \
		--seed $(SEED) --out $(RUNS)/teacher --resume

$(RUNS)/label/run.json: $(DATA)/dataset.json
	$(PY) train_net/train_net.py --arch $(ARCH) --data $(DATA) --split train --val-split val \
		--epochs $(LABEL_EPOCHS) --lr 0.05 --checkpoints paper --device $(DEVICE) \
		--seed $(SEED) --out $(RUNS)/label --resume

demo: $(RUNS)/teacher/run.json $(RUNS)/label/run.json
	@$(PY) -c "import json; [print(f'{r}: val top-1 {json.load(open(\"$(RUNS)/\" + r + \"/run.json\"))[\"final\"][\"val_acc1\"]:.1f}%') for r in ('teacher', 'label')]"

clean-demo:
	rm -rf $(RUNS) $(DATA)
