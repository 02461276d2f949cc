# kdq — the two README commands (`make demo`, `make test`) and the stages of the study as targets.
# `make -n demo` prints the exact commands, to run by hand on your own data.  Every stage writes a
# `.done` marker only when its script succeeded, so an interrupted demo continues from the last
# finished stage (and each script's --resume continues the stage itself).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/embedded
RUNS ?= runs/demo
ARCH ?= vgg_tiny
LAYER ?= fc1
DEVICE ?= cpu
SEED ?= 0
# demo scale (see README: measured ≈ minutes on 2 CPU cores)
TEACHER_EPOCHS ?= 20
EPOCHS ?= 20
FINETUNE_EPOCHS ?= 20
CHECKPOINTS ?= 0 2 5 10 15 20
TRAIN_FLAGS ?= --batch-size 16 --lr 0.02 --device $(DEVICE) --seed $(SEED)
# a quarter of the paper's steps with a 4× larger σ learning rate follows the same trajectory (log σ* correlates
# 0.94–0.99 per image with the full n=96, T=80 fit on vgg_tiny): ~0.5–0.9 s per fit on one core
SIGMA_FLAGS ?= --pic-num 48 --effect-num 24 --samples 16 --steps 20 --break-steps 5 --lr 4e-4 --batch-images 6 \
	--device $(DEVICE) --seed $(SEED)
# regressing the logits (fc3) diverges at --lr 0.02: the teacher's logits start ~150 (MSE) away from the student's
DISTIL_LR_fc3 ?= 3e-4
METRIC_FLAGS ?= --bootstrap 1000 --seed $(SEED)
PYTEST_ARGS ?=

.PHONY: demo study test test-quick venv clean-demo help

help:
	@echo "make demo        the study on the embedded dataset (CPU, minutes)"
	@echo "make study       all four layers, vgg_tiny and resnet_tiny, more images (tens of minutes)"
	@echo "make test        the whole test suite; make test-quick skips the slow end-to-end tests"
	@echo "make -n demo     print the commands without running them"

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

# ---- the study: one target per stage -------------------------------------------------------------
$(DATA)/dataset.json: | venv
	$(PY) function/make_dataset.py --out $(DATA) --seed $(SEED) --overwrite

$(RUNS)/teacher/.done: $(DATA)/dataset.json | venv
	$(PY) train_net/train_net.py --arch $(ARCH) --data $(DATA) --split teacher --val-split val \
		--epochs $(TEACHER_EPOCHS) --checkpoints $(TEACHER_EPOCHS) $(TRAIN_FLAGS) --out $(@D) --resume
	touch $@

$(RUNS)/label/.done: $(DATA)/dataset.json | venv
	$(PY) train_net/train_net.py --arch $(ARCH) --data $(DATA) --split train --val-split val \
		--epochs $(EPOCHS) --checkpoints $(CHECKPOINTS) $(TRAIN_FLAGS) --out $(@D) --resume
	touch $@

$(RUNS)/distil/%/.done: $(RUNS)/teacher/.done | venv
	$(PY) distillation/distillation.py --teacher_checkpoint $(RUNS)/teacher/$(TEACHER_EPOCHS).pth.tar \
		--teacher-arch $(ARCH) --arch $(ARCH) --layer $* --data $(DATA) --split train --val-split val \
		--epochs $(EPOCHS) --finetune-epochs $(FINETUNE_EPOCHS) --checkpoints $(CHECKPOINTS) $(TRAIN_FLAGS) \
		$(if $(DISTIL_LR_$*),--lr $(DISTIL_LR_$*)) --out $(@D) --resume
	touch $@

$(RUNS)/sigma_label/%/.done: $(RUNS)/label/.done | venv
	$(PY) sigma/train_sigma.py --checkpoint_root $(RUNS)/label --arch $(ARCH) --layer $* --data $(DATA) \
		--split train $(SIGMA_FLAGS) --out $(@D) --resume
	touch $@

$(RUNS)/sigma_distil/%/.done: $(RUNS)/distil/%/.done | venv
	$(PY) sigma/train_sigma.py --checkpoint_root $(RUNS)/distil/$* --arch $(ARCH) --layer $* --data $(DATA) \
		--split train $(SIGMA_FLAGS) --out $(@D) --resume
	touch $@

$(RUNS)/metrics_%/report.md: $(RUNS)/sigma_label/%/.done $(RUNS)/sigma_distil/%/.done | venv
	$(PY) sigma/find_knowledge_new.py --label-sigma $(RUNS)/sigma_label/$* --distil-sigma $(RUNS)/sigma_distil/$* \
		--label-run $(RUNS)/label --distil-run $(RUNS)/distil/$* --data $(DATA) --split train --layer $* \
		$(METRIC_FLAGS) --out $(@D) --overwrite

demo: $(RUNS)/metrics_$(LAYER)/report.md
	@$(PY) function/summarize_runs.py $(RUNS)

STUDY_LAYERS ?= conv fc1 fc2 fc3
# One table over every layer whose two sigma runs exist (sigma_label/<layer>, sigma_distil/<layer>, distil/<layer>).
$(RUNS)/metrics_all/report.md: $(foreach l,$(STUDY_LAYERS),$(RUNS)/sigma_label/$(l)/.done $(RUNS)/sigma_distil/$(l)/.done) | venv
	$(PY) sigma/find_knowledge_new.py --label-sigma $(RUNS)/sigma_label --distil-sigma $(RUNS)/sigma_distil \
		--label-run $(RUNS)/label --distil-run $(RUNS)/distil --data $(DATA) --split train --layer all \
		$(METRIC_FLAGS) --out $(@D) --overwrite

# The fuller study: both tiny archs, all four layers, more images than the demo (same per-fit settings).
# One report per arch covering the four layers; see README for the measured time.
STUDY_RUNS ?= runs/study
STUDY_SIGMA_FLAGS ?= --pic-num 64 --effect-num 32 --samples 16 --steps 20 --break-steps 5 --lr 4e-4 \
	--batch-images 8 --device $(DEVICE) --seed $(SEED)
study: | venv
	for arch in vgg_tiny resnet_tiny; do \
		$(MAKE) --no-print-directory $(STUDY_RUNS)/$$arch/metrics_all/report.md RUNS=$(STUDY_RUNS)/$$arch \
			ARCH=$$arch VENV=$(VENV) DATA=$(DATA) SIGMA_FLAGS="$(STUDY_SIGMA_FLAGS)" || exit 1; done
	$(PY) function/summarize_runs.py $(STUDY_RUNS) --report $(STUDY_RUNS)/report.md

clean-demo:
	rm -rf $(RUNS) $(DATA)

.PRECIOUS: $(RUNS)/%/.done $(RUNS)/distil/%/.done $(RUNS)/sigma_label/%/.done $(RUNS)/sigma_distil/%/.done
.SECONDARY:
