# smx: the two commands a newcomer types are `make demo` and `make test`; both build .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SMX := $(VENV)/bin/smx
STAMP := $(VENV)/.smx-installed
RECIPE ?= recipes/ding_switch.yaml
# Every estimator that takes the recipe's k under the controlled protocol; topk and sparsemixer (top-1 recipes) also
# under the reference protocol, as a second, smaller table. The language-model recipes route top-2.
ifneq (,$(findstring _lm,$(RECIPE)))
ESTIMATORS ?= topk,sparsemixer_v2,straight_through,default_moe,densemixer
REF_ESTIMATORS ?=
else
ESTIMATORS ?= topk,sparsemixer,sparsemixer_v2,straight_through,default_moe,densemixer
REF_ESTIMATORS ?= topk,sparsemixer
endif
SEEDS ?= 1,2,3
JOBS ?= 2
STUDY ?= studies/$(basename $(notdir $(RECIPE)))
DEMO_DIR ?= demo/ding_switch

.PHONY: venv test test-fast demo bench gradients reproduce publish clean-venv gpu-check gpu-wheels

# Evaluate every finished run of a study: BLEU for translation runs, perplexity for LM runs.
define eval_study
	@for meta in $(1)/*/meta.json; do \
	  run=$$(dirname $$meta); \
	  if grep -q '"status": "done"' $$meta; then \
	    if grep -q '"task": "language_modeling"' $$meta; then $(SMX) eval ppl $$run || exit 1; \
	    else $(SMX) eval bleu $$run || exit 1; fi; \
	  fi; \
	done
endef

venv: $(STAMP)

# torch (the pinned CPU wheel), cython, numpy, setuptools and wheel first; then fairseq-fixed (compiled, ~2 min)
# and the rest with --no-build-isolation, so that pip never pulls a second (CUDA) torch into a build environment.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 cython numpy setuptools wheel
	$(PY) -m pip install -q --no-build-isolation fairseq-fixed==0.12.3.1 -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The main job on the embedded default: sparsemixer vs topk on real De-En text (ding-de-en, offline), two runs in
# parallel (one torch thread each), BLEU on the test split, then the comparison table and plots.
demo: $(STAMP)
	$(SMX) data prep ding-de-en
	$(SMX) sweep recipes/ding_switch.yaml --estimators sparsemixer,topk --seeds 1 --study-dir $(DEMO_DIR) --jobs 2
	$(call eval_study,$(DEMO_DIR))
	$(SMX) compare $(DEMO_DIR) --baseline topk --out $(DEMO_DIR)/compare

# The whole head-to-head study: RECIPE=recipes/shakespeare_lm.yaml (language modeling, top-2),
# RECIPE=recipes/multi30k_switch.yaml or RECIPE=recipes/wmt14_switch.yaml JOBS=1 (GPU) select another study.
# Controlled protocol (only the estimator differs) for ESTIMATORS; REF_ESTIMATORS again under the reference protocol
# (each arm as its authors trained it) in STUDY-reference, reported as a second table.
REF_STUDY := $(STUDY)-reference
REPORT_COMMANDS = --command "make reproduce RECIPE=$(RECIPE) ESTIMATORS=$(ESTIMATORS) REF_ESTIMATORS=$(REF_ESTIMATORS) SEEDS=$(SEEDS) JOBS=$(JOBS)" \
  --command "smx sweep $(RECIPE) --estimators $(ESTIMATORS) --seeds $(SEEDS) --study-dir $(STUDY) --jobs $(JOBS) --set router.protocol=controlled" \
  $(if $(REF_ESTIMATORS),--command "smx sweep $(RECIPE) --estimators $(REF_ESTIMATORS) --seeds $(SEEDS) --study-dir $(REF_STUDY) --jobs $(JOBS) --set router.protocol=reference") \
  --command "smx eval bleu|ppl <each done run>" \
  --command "smx compare $(STUDY) --baseline topk --out $(STUDY)/compare"
reproduce: $(STAMP)
	$(SMX) sweep $(RECIPE) --estimators $(ESTIMATORS) --seeds $(SEEDS) --study-dir $(STUDY) --jobs $(JOBS) \
	  --set router.protocol=controlled
	$(call eval_study,$(STUDY))
	$(SMX) compare $(STUDY) --baseline topk --out $(STUDY)/compare
ifneq (,$(REF_ESTIMATORS))
	$(SMX) sweep $(RECIPE) --estimators $(REF_ESTIMATORS) --seeds $(SEEDS) --study-dir $(REF_STUDY) --jobs $(JOBS) \
	  --set router.protocol=reference
	$(call eval_study,$(REF_STUDY))
	$(SMX) compare $(REF_STUDY) --baseline topk --out $(REF_STUDY)/compare
endif
	$(SMX) report $(STUDY) --compare-dir $(STUDY)/compare $(if $(REF_ESTIMATORS),--secondary $(REF_STUDY)/compare) \
	  $(REPORT_COMMANDS)

# The study's small files (per run: recipe.yaml, meta.json, metrics.jsonl, eval/*.json) under results/, with its
# comparison and report regenerated there from them alone: what is committed as "what smx found".
RESULTS ?= results/$(basename $(notdir $(RECIPE)))
publish: $(STAMP)
	$(SMX) export $(STUDY) --to $(RESULTS)
	$(SMX) compare $(RESULTS) --baseline topk --out $(RESULTS)
ifneq (,$(REF_ESTIMATORS))
	$(SMX) export $(REF_STUDY) --to $(RESULTS)-reference
	$(SMX) compare $(RESULTS)-reference --baseline topk --out $(RESULTS)-reference
endif
	$(SMX) report $(RESULTS) --compare-dir $(RESULTS) $(if $(REF_ESTIMATORS),--secondary $(RESULTS)-reference) \
	  $(REPORT_COMMANDS) --command "make publish RECIPE=$(RECIPE) RESULTS=$(RESULTS)"

# Benchmarks (medians and ratios, both sides in one process; JSON under bench/results/).
bench: $(STAMP)
	$(PY) -m bench all --wait-idle 600
	rm -rf /tmp/smx-bench-demo && $(PY) -m bench peak-rss -- $(MAKE) demo DEMO_DIR=/tmp/smx-bench-demo

gradients: $(STAMP)
	$(SMX) diagnose gradients --json bench/results/gradient_fidelity.json --force

# Wheels for the offline GPU machine (CPython 3.12, its own CUDA torch): fairseq-fixed compiled here without torch, and
# what else it lacks, into .gpu-wheels/; there, `bash scripts/gpu_setup.sh` installs them.
gpu-wheels:
	bash scripts/gpu_wheels.sh

clean-venv:
	rm -rf $(VENV)

# The accelerator machine's one prepared check (README "On a GPU"); --device cpu --quick runs it here.
gpu-check:
	python3 -m bench gpu-check
