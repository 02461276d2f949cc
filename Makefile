# kdq — the two README commands (`make demo`, `make test`) and the stages of the study as targets.
# `make -n demo` prints the exact commands, to run by hand on your own data.  Every stage writes a
# `.done` marker only when its script succeeded, so an interrupted demo continues from the last
# finished stage (and each script's --resume continues the stage itself).
# Stages that do not depend on each other may run at once (make's job graph: the teacher beside the label net, the
# label net's sigma run beside the distillation, ...), JOBS at a time, each with THREADS torch threads.  The default,
# one stage at a time with two threads, is the fastest on an idle 2-core machine (3 min 51 s against 4 min 7 s for
# JOBS=2 THREADS=1) and writes the README's table; on a loaded machine JOBS=2 THREADS=1 is much faster (docs/
# performance.md, Threads).  THREADS does not follow JOBS: torch's CPU results depend on the thread count (float
# rounding), so every JOBS writes the same files byte for byte for one THREADS.  A -j on the command line replaces
# JOBS; a make run by another make (study, validate) shares its JOBS slots.
JOBS ?= 1
THREADS ?= 2
ifeq ($(MAKELEVEL),0)
MAKEFLAGS += -j$(JOBS)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
# MODALITY=text or points: the same study on the embedded token sequences (a BiLSTM) or point clouds (a PointNet),
# each in its own data and runs folders (docs/results.md, "Tokens and point clouds")
MODALITY ?= image
DATA_image := data/embedded
DATA_text := data/embedded_text
DATA_points := data/embedded_points
RUNS_image := runs/demo
RUNS_text := runs/demo_text
RUNS_points := runs/demo_points
ARCH_image := vgg_tiny
ARCH_text := bilstm_tiny
ARCH_points := pointnet_tiny
# each modality's training rate, epochs, data size and draw: the BiLSTM learns at 0.05, not at 0.02, in 20 epochs; the
# PointNet needs 150 clouds per class and 40 epochs (label net 81 % val top-1, at 60 and 20: 50 %), and its fc1 keeps
# the clutter more than the shape on most clouds (the effective-sample rule kept 9 of 192 of the label net's), so the
# points demo fits every drawn cloud (--effective-rule off: listed in the report as not the paper's)
LR_image := 0.02
LR_text := 0.05
LR_points := 0.02
EPOCHS_image := 20
EPOCHS_text := 20
EPOCHS_points := 40
CHECKPOINTS_image := 0 2 5 10 15 20
CHECKPOINTS_text := 0 2 5 10 15 20
CHECKPOINTS_points := 0 5 10 20 30 40
SIZE_image :=
SIZE_text :=
SIZE_points := --train-per-class 150
DRAW_image := --pic-num 48 --effect-num 24
DRAW_text := --pic-num 96 --effect-num 48
DRAW_points := --pic-num 96 --effect-num 96 --effective-rule off
DATA ?= $(DATA_$(MODALITY))
RUNS ?= $(RUNS_$(MODALITY))
ARCH ?= $(ARCH_$(MODALITY))
LAYER ?= fc1
DEVICE ?= cpu
SEED ?= 0
# training seeds: one label net, one distil net and their sigma runs per seed (the teacher once, seed $(SEED)), all
# in one metrics report.  The runs of seed $(SEED) live in $(RUNS) (runs/demo/label ...), those of any other seed s
# in $(RUNS)/seed<s>; with several seeds the report goes to $(RUNS)/seeds_<s1>_<s2>.../metrics_<layer>.
SEEDS ?= $(SEED)
# the seed of the training or sigma run a rule makes: $(SEED), or the seed of the seed folder (set per rule below)
RUN_SEED = $(SEED)
# demo scale (see docs/results.md: measured ≈ minutes on 2 CPU cores)
TEACHER_EPOCHS ?= $(EPOCHS_$(MODALITY))
EPOCHS ?= $(EPOCHS_$(MODALITY))
FINETUNE_EPOCHS ?= $(EPOCHS_$(MODALITY))
CHECKPOINTS ?= $(CHECKPOINTS_$(MODALITY))
TRAIN_FLAGS ?= --batch-size 16 --lr $(LR_$(MODALITY)) --device $(DEVICE) --threads $(THREADS) --seed $(RUN_SEED)
# a quarter of the paper's steps with a 4× larger σ learning rate follows the same trajectory (log σ* correlates
# 0.94–0.99 per image with the full n=96, T=80 fit on vgg_tiny): ~0.5–0.9 s per fit on one core
SIGMA_FLAGS ?= $(DRAW_$(MODALITY)) --samples 16 --steps 20 --break-steps 5 --lr 4e-4 --batch-images 6 \
	--device $(DEVICE) --threads $(THREADS) --seed $(RUN_SEED)
# regressing the logits (fc3) diverges at --lr 0.02: the teacher's logits start ~150 (MSE) away from the student's
DISTIL_LR_fc3 ?= 3e-4
METRIC_FLAGS ?= --bootstrap 1000 --threads $(THREADS) --seed $(SEED)
PYTEST_ARGS ?=

.PHONY: demo study validate test test-quick venv clean-demo clean-validate help

help:
	@echo "make demo        the study on the embedded dataset (CPU, minutes)"
	@echo "make study       all four layers, vgg_tiny and resnet_tiny, more images (tens of minutes)"
	@echo "make demo SEEDS=\"0 1 2\"  (or study) several training seeds per net, one report"
	@echo "make validate    knowledge planted on purpose: a background shortcut and negative controls"
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
DATA_FLAGS ?=
# DATA_FLAGS: more kdq-data (kdq.function.stages.make_dataset) flags (make validate passes --background-cue)
MODALITY_FLAGS = $(if $(filter-out image,$(MODALITY)),--modality $(MODALITY)) $(SIZE_$(MODALITY))
$(DATA)/dataset.json: | venv
	$(PY) -m kdq.function.stages.make_dataset --out $(DATA) --seed $(SEED) --overwrite$(if $(strip $(MODALITY_FLAGS) $(DATA_FLAGS)), $(strip $(MODALITY_FLAGS) $(DATA_FLAGS)))

$(RUNS)/teacher/.done: $(DATA)/dataset.json | venv
	$(PY) train_net/train_net.py --arch $(ARCH) --data $(DATA) --split teacher --val-split val \
		--epochs $(TEACHER_EPOCHS) --checkpoints $(TEACHER_EPOCHS) $(TRAIN_FLAGS) --out $(@D) --resume
	touch $@

# The runs of every seed (SEEDS and SEED): the label net in <seed folder>/label, the distil net, the sigma runs in
# <seed folder>/{distil,sigma_label,sigma_distil}/<layer>; a recipe reads its layer and seed folder off its target.
STAGE_LAYERS = $(sort conv fc1 fc2 fc3 $(LAYER) $(STUDY_LAYERS))
seed_dir = $(if $(filter $(SEED),$(1)),$(RUNS),$(RUNS)/seed$(1))
SEED_DIRS = $(foreach s,$(SEEDS),$(call seed_dir,$(s)))
ALL_SEED_DIRS = $(foreach s,$(sort $(SEED) $(SEEDS)),$(call seed_dir,$(s)))
# $(call seed_paths,PATH): PATH below every seed's folder, in the order of SEEDS (one value per training seed)
seed_paths = $(foreach d,$(SEED_DIRS),$(d)/$(1))
# $(call per_layer,STAGE[,FOLDERS]): STAGE/<layer>/.done of every layer below every seed folder (or FOLDERS)
per_layer = $(foreach d,$(or $(2),$(ALL_SEED_DIRS)),$(foreach l,$(STAGE_LAYERS),$(d)/$(1)/$(l)/.done))
up = $(patsubst %/,%,$(dir $(1)))
THIS_LAYER = $(notdir $(@D))
THIS_SEED_DIR = $(call up,$(call up,$(@D)))
empty :=
space := $(empty) $(empty)
SEEDS_SUBDIR = $(if $(word 2,$(SEEDS)),/seeds_$(subst $(space),_,$(strip $(SEEDS))))
REPORTS = $(RUNS)$(SEEDS_SUBDIR)
# each seed folder's runs get its seed (`private`: not passed on to the dataset and the teacher, which keep SEED)
$(foreach s,$(filter-out $(SEED),$(SEEDS)),$(eval $(call seed_dir,$(s))/label/.done \
	$(foreach stage,distil sigma_label sigma_distil,$(call per_layer,$(stage),$(call seed_dir,$(s)))): \
	private RUN_SEED = $(s)))

.SECONDEXPANSION:
$(foreach d,$(ALL_SEED_DIRS),$(d)/label/.done): $(DATA)/dataset.json | venv
	$(PY) train_net/train_net.py --arch $(ARCH) --data $(DATA) --split train --val-split val \
		--epochs $(EPOCHS) --checkpoints $(CHECKPOINTS) $(TRAIN_FLAGS) --out $(@D) --resume
	touch $@

$(call per_layer,distil): $(RUNS)/teacher/.done | venv
	$(PY) distillation/distillation.py --teacher_checkpoint $(RUNS)/teacher/$(TEACHER_EPOCHS).pth.tar \
		--teacher-arch $(ARCH) --arch $(ARCH) --layer $(THIS_LAYER) --data $(DATA) --split train --val-split val \
		--epochs $(EPOCHS) --finetune-epochs $(FINETUNE_EPOCHS) --checkpoints $(CHECKPOINTS) $(TRAIN_FLAGS) \
		$(if $(DISTIL_LR_$(THIS_LAYER)),--lr $(DISTIL_LR_$(THIS_LAYER))) --out $(@D) --resume
	touch $@

$(call per_layer,sigma_label): $$(THIS_SEED_DIR)/label/.done | venv
	$(PY) sigma/train_sigma.py --checkpoint_root $(THIS_SEED_DIR)/label --arch $(ARCH) --layer $(THIS_LAYER) --data $(DATA) \
		--split train $(SIGMA_FLAGS) --out $(@D) --resume
	touch $@

$(call per_layer,sigma_distil): $$(THIS_SEED_DIR)/distil/$$(THIS_LAYER)/.done | venv
	$(PY) sigma/train_sigma.py --checkpoint_root $(THIS_SEED_DIR)/distil/$(THIS_LAYER) --arch $(ARCH) --layer $(THIS_LAYER) --data $(DATA) \
		--split train $(SIGMA_FLAGS) --out $(@D) --resume
	touch $@

$(REPORTS)/metrics_%/report.md: $(call seed_paths,sigma_label/%/.done) $(call seed_paths,sigma_distil/%/.done) | venv
	$(PY) sigma/find_knowledge_new.py --label-sigma $(call seed_paths,sigma_label/$*) --distil-sigma $(call seed_paths,sigma_distil/$*) \
		--label-run $(call seed_paths,label) --distil-run $(call seed_paths,distil/$*) --data $(DATA) --split train --layer $* \
		$(METRIC_FLAGS) --out $(@D) --overwrite

demo: $(REPORTS)/metrics_$(LAYER)/report.md
	@$(PY) -m kdq.function.stages.summarize_runs $(RUNS)

STUDY_LAYERS ?= conv fc1 fc2 fc3
# One table over every layer whose two sigma runs exist (sigma_label/<layer>, sigma_distil/<layer>, distil/<layer>).
$(REPORTS)/metrics_all/report.md: $(foreach l,$(STUDY_LAYERS),$(call seed_paths,sigma_label/$(l)/.done) $(call seed_paths,sigma_distil/$(l)/.done)) | venv
	$(PY) sigma/find_knowledge_new.py --label-sigma $(call seed_paths,sigma_label) --distil-sigma $(call seed_paths,sigma_distil) \
		--label-run $(call seed_paths,label) --distil-run $(call seed_paths,distil) --data $(DATA) --split train --layer all \
		$(METRIC_FLAGS) --out $(@D) --overwrite

# The fuller study: both tiny archs, all four layers, more images than the demo (same per-fit settings).
# One report per arch covering the four layers; see docs/results.md for the measured time.  SEEDS as for the demo; the
# sigma flags are handed over unexpanded, so that each seed's sigma runs get their own --seed.  Each arch's runs are a
# make of their own (study-<arch>), both at once sharing the JOBS slots, after the dataset they both read.
STUDY_RUNS ?= runs/study
STUDY_SIGMA_FLAGS ?= --pic-num 64 --effect-num 32 --samples 16 --steps 20 --break-steps 5 --lr 4e-4 \
	--batch-images 8 --device $(DEVICE) --threads $(THREADS) --seed $(RUN_SEED)
STUDY_ARCHS = vgg_tiny resnet_tiny
STUDY_GOALS = $(addprefix study-,$(STUDY_ARCHS))
.PHONY: $(STUDY_GOALS)
$(STUDY_GOALS): study-%: $(DATA)/dataset.json | venv
	$(MAKE) --no-print-directory $(STUDY_RUNS)/$*$(SEEDS_SUBDIR)/metrics_all/report.md RUNS=$(STUDY_RUNS)/$* ARCH=$* \
		VENV=$(VENV) DATA=$(DATA) SIGMA_FLAGS='$(value STUDY_SIGMA_FLAGS)'

study: $(STUDY_GOALS) | venv
	$(PY) -m kdq.function.stages.summarize_runs $(STUDY_RUNS) --report $(STUDY_RUNS)/report.md --overwrite

# ---- make validate: knowledge planted on purpose (docs/validation.md) ------------------------------------------
# The demo's stages with the demo's flags, in a make of their own, on a dataset whose train split carries a
# class-coded background cue (kdq-data --background-cue; the teacher and val splits stay clean), plus three
# negative controls; bench/validate.py then prints the table of expected against measured.
VALIDATE_DATA ?= data/validate
VALIDATE_RUNS ?= runs/validate
VALIDATE_LAYER ?= fc1
# every drawn image is kept: the effective-sample rule (method.md §2) drops an image whose map keeps more background
# than foreground, which is what a net using the cue does (bench/validate.py counts what the rule would drop)
VALIDATE_SIGMA_FLAGS ?= $(SIGMA_FLAGS) --effective-rule off
VALIDATE_TARGETS = metrics_$(VALIDATE_LAYER)/report.md control_same_$(VALIDATE_LAYER).log \
	sigma_untrained/$(VALIDATE_LAYER)/.done fgbg_masks_$(VALIDATE_LAYER).json fgbg_shuffled_$(VALIDATE_LAYER).json
validate: | venv
	$(MAKE) --no-print-directory $(addprefix $(VALIDATE_RUNS)/,$(VALIDATE_TARGETS)) RUNS=$(VALIDATE_RUNS) \
		DATA=$(VALIDATE_DATA) DATA_FLAGS=--background-cue LAYER=$(VALIDATE_LAYER) SEEDS=$(SEED) VENV=$(VENV) \
		SIGMA_FLAGS="$(VALIDATE_SIGMA_FLAGS)"
	$(PY) bench/validate.py --runs $(VALIDATE_RUNS) --data $(VALIDATE_DATA) --layer $(VALIDATE_LAYER) \
		--json $(VALIDATE_RUNS)/validation.json

# control: one sigma run given as both nets; the metrics stage's answer (a report, or its refusal) and its exit
# status are kept in the log
$(RUNS)/control_same_%.log: $(RUNS)/sigma_label/%/.done | venv
	$(PY) sigma/find_knowledge_new.py --label-sigma $(RUNS)/sigma_label/$* --distil-sigma $(RUNS)/sigma_label/$* \
		--label-run $(RUNS)/label --distil-run $(RUNS)/label --data $(DATA) --split train --layer $* \
		$(METRIC_FLAGS) --no-figures --out $(RUNS)/control_same_$* --overwrite > $@.tmp 2>&1; echo "exit status $$?" >> $@.tmp
	mv $@.tmp $@

# control: the label net's checkpoint 0 alone, an untrained net
$(RUNS)/sigma_untrained/%/.done: $(RUNS)/label/.done | venv
	$(PY) sigma/train_sigma.py --checkpoint_root $(RUNS)/label --arch $(ARCH) --layer $* --data $(DATA) \
		--split train $(SIGMA_FLAGS) --checkpoints 0 --out $(@D) --resume
	touch $@

# control: the label net's maps against the masks, and against masks shuffled between images
$(RUNS)/fgbg_masks_%.json: $(RUNS)/sigma_label/%/.done | venv
	$(PY) bench/sigma_fg_bg.py --sigma $(RUNS)/sigma_label/$* --data $(DATA) --split train --json $@

$(RUNS)/fgbg_shuffled_%.json: $(RUNS)/sigma_label/%/.done | venv
	$(PY) bench/sigma_fg_bg.py --sigma $(RUNS)/sigma_label/$* --data $(DATA) --split train --shuffle-masks --json $@

clean-demo:
	rm -rf $(RUNS) $(DATA)

clean-validate:
	rm -rf $(VALIDATE_RUNS) $(VALIDATE_DATA)

.PRECIOUS: $(RUNS)/%/.done $(RUNS)/distil/%/.done $(RUNS)/sigma_label/%/.done $(RUNS)/sigma_distil/%/.done
.SECONDARY:

# ---- the GPU check (issue 26): the CUDA tests and the σ fit's speed on one NVIDIA GPU (one line without a GPU) ----
# PYTHON: this checkout's venv where it exists, else python3 (a GPU machine's own torch; nothing is installed)
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
.PHONY: gpu-check
gpu-check:
	PYTHON=$(GPU_PYTHON) bash bench/gpu_check.sh
