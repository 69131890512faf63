# `make test` sets itself up on a fresh machine: .venv, the CPU build of torch, the project with its dev extra.
# `make demo` runs the whole job: data, tokenizer, pretraining, fine-tuning, the few-shot table, then chat;
# `make prefer` then adds preference tuning (the built-in set, DPO, KTO) and measures its effect.
# Each step's output is a file target, so a second `make demo` reuses what is already built.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
SHARED_DATA ?= ../shared/data
SEQ2SEQ := $(BIN)/seq2seq

PRETRAINED := runs/pretrain-shakespeare-cpu/final
FINETUNED := runs/finetune/final

.PHONY: setup test lint bench demo chat prefer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A bare `torch` requirement with no torch present pulls several GB of CUDA wheels, so pin the CPU build first.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Every benchmark, one JSON in bench/results/ (run it alone on a quiet machine); bench-docs renders the latest into
# docs/results.md and README.md; bench-quick is the smoke test (about a minute); bench-gpu needs one GPU (8 minutes).
.PHONY: bench-quick bench-docs bench-gpu
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m bench

bench-quick: setup $(VENV)/.bench-installed
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

bench-docs: setup
	$(BIN)/python -m bench.docs

bench-gpu: setup $(VENV)/.bench-installed
	bench/gpu.sh

# ---- the demo -------------------------------------------------------------------------------------------------

data/raw/.fetched: | $(VENV)/.installed
	if [ -d "$(SHARED_DATA)" ]; then $(SEQ2SEQ) data fetch --from "$(SHARED_DATA)"; else $(SEQ2SEQ) data fetch; fi
	touch $@

data/tokenizer/tokenizer.model: data/raw/.fetched
	$(SEQ2SEQ) data tokenizer

data/corpus/shakespeare/meta.json: data/tokenizer/tokenizer.model
	$(SEQ2SEQ) data corpus --config configs/data/corpus-shakespeare.yaml

data/mixture/default/summary.json: data/tokenizer/tokenizer.model
	$(SEQ2SEQ) data build --config configs/data/mixture-default.yaml

$(PRETRAINED)/model.safetensors: data/corpus/shakespeare/meta.json
	$(SEQ2SEQ) pretrain --config configs/pretrain/shakespeare-cpu.yaml resume=latest

$(FINETUNED)/model.safetensors: $(PRETRAINED)/model.safetensors data/mixture/default/summary.json
	$(SEQ2SEQ) finetune --config configs/finetune/default.yaml --from $(PRETRAINED) resume=latest

runs/finetune/fewshot.json: $(FINETUNED)/model.safetensors
	$(SEQ2SEQ) eval --model $(FINETUNED) --tasks speaker,sarcasm,joke --shots 0,1,5 --limit 200 --out $@

demo: runs/finetune/fewshot.json
	cat runs/finetune/fewshot.md
	if [ -t 0 ]; then $(SEQ2SEQ) chat --model $(FINETUNED); else echo "(no terminal: run 'make chat' to talk to the model)"; fi

chat: $(FINETUNED)/model.safetensors
	$(SEQ2SEQ) chat --model $(FINETUNED)

# ---- preference tuning, after the demo: the built-in set, DPO, KTO, and their measured effect ------------------

data/prefs/pairs.jsonl: $(FINETUNED)/model.safetensors
	$(SEQ2SEQ) data prefs --from $(FINETUNED)

runs/dpo/final/model.safetensors: data/prefs/pairs.jsonl
	$(SEQ2SEQ) finetune --config configs/finetune/dpo.yaml --from $(FINETUNED) resume=latest

runs/kto/final/model.safetensors: data/prefs/pairs.jsonl
	$(SEQ2SEQ) finetune --config configs/finetune/kto.yaml --from $(FINETUNED) resume=latest

prefer: runs/dpo/final/model.safetensors runs/kto/final/model.safetensors
	$(BIN)/python bench/bench_prefs.py --out runs/prefs.json

clean:
	rm -rf $(VENV) .pytest_cache
