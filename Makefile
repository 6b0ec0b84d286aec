# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lnpeft-installed

.PHONY: venv demo reproduce reproduction-doc test test-e2e bench clean-demo

# The venv is rebuilt when pyproject.toml changes (the pins live there).
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "lnpeft needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,export]'
	touch $@

venv: $(STAMP)

# The paper's DAG at demo scale (MiniLM, local GLUE copy, CPU, offline), then its headline: Table 2
# beside each task's trivial baseline. The demo's runs are a minute long: one thread each and
# jobs side by side beat one job on every core.
DEMO_THREADS := finetune=1 finetune_fisher_subset=1 train_pack=1 finetune_for_drift=1 compute_fisher=1
demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/snakemake all --profile profiles/local \
		--configfile configs/demo.yaml --set-threads $(DEMO_THREADS)
	$(BIN)/lnpeft summary --scores results/tables/scores.parquet --data-dir results/data

# The reproduction at CPU scale, sized to judge the paper (configs/minilm-long.yaml: 5 tasks whose
# full fine-tuning learns, 8 epochs, 3 seeds, 246 jobs, one thread each, bf16 where the CPU has it;
# docs/reproduction-minilm.md gives its measured CPU time). Run it again after an interruption and
# it resumes; then its headline. REPRO=configs/minilm-converge.yaml runs the shorter first one.
# EVIDENCE: where the finished jobs' results are kept between sittings (lnpeft evidence; committed
# for the long one): restored once the inputs are rebuilt, saved again when snakemake stops.
REPRO     ?= configs/minilm-long.yaml
REPRO_DOC ?= docs/reproduction-minilm.md
EVIDENCE  ?= evidence/$(basename $(notdir $(REPRO)))
# Targets go first: --configfile and --set-threads take every word after them.
snake_repro = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/snakemake $(1) --profile profiles/local \
	--configfile $(REPRO) --set-threads $(DEMO_THREADS)
reproduce: $(STAMP)
	if [ -d $(EVIDENCE) ]; then $(call snake_repro,data init) && $(BIN)/lnpeft evidence restore $(EVIDENCE); fi
	$(call snake_repro,all --keep-going); status=$$?; $(BIN)/lnpeft evidence save $(EVIDENCE) && exit $$status
	$(BIN)/lnpeft summary --scores results/tables/scores.parquet --data-dir results/data

# docs/reproduction-minilm.md and its figures, from the results and Snakemake logs of `make reproduce`.
reproduction-doc: $(STAMP)
	$(BIN)/lnpeft writeup --configfile config.yaml --configfile $(REPRO) --results results \
		--log $(sort $(wildcard .snakemake/log/*.snakemake.log)) --out $(REPRO_DOC) --readme README.md

# The default test suite: unit tests and a tiny end-to-end workflow (minutes).
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest

# Slow tests: the demo-sized workflow and the workflow on a real single-node SLURM (needs root).
test-e2e: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -m "slow or slurm"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py --quick --out bench/out
