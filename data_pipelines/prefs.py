"""The built-in preference set, `seq2seq data prefs --from FINETUNED_DIR`: pairs of (the dataset's reply =
chosen, the model's own greedy reply = rejected) for the train split's chat prompts (plain and joke tone), as
self-play fine-tuning does (SPIN, Chen et al., 2024, https://arxiv.org/abs/2401.01335), written as DPO pairs
(pairs.jsonl) and as KTO thumbs (thumbs.jsonl: the reply up, the model's down). A prompt whose greedy reply equals
its reference gives no pair (counted). Bounded: at most `max_examples` prompts, drawn with a seed, with a progress
bar."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_pipelines.mixture import load_mixture
from seq2seq.checkpoint import WEIGHTS_FILE, load_pretrained
from seq2seq.files import sha256_file, write_text_atomic
from seq2seq.generation import GenerationConfig, generate
from seq2seq.prompting import INFERENCE_FILE, InferenceSpec, build_source
from seq2seq.tasks import CHAT_TASK, tone_of


def make_preferences(checkpoint: str | Path, mixture: str | Path, out: str | Path, max_examples: int = 2000,
                     seed: int = 0, batch_size: int = 64, max_new_tokens: int = 48, max_src_len: int = 192,
                     device: str = "cpu") -> dict[str, int]:
    """Write out/pairs.jsonl and out/thumbs.jsonl; the counts of what was written and skipped."""
    import json

    if not (Path(checkpoint) / INFERENCE_FILE).is_file():
        raise ValueError(f"--from {checkpoint}: pretrained only (no {INFERENCE_FILE}); the preference set compares a "
                         f"fine-tuned model's replies with the dataset's")
    if max_examples < 1:
        raise ValueError(f"--max-examples must be >= 1, got {max_examples}")
    model, tokenizer = load_pretrained(checkpoint, device)
    spec = InferenceSpec.load(checkpoint)
    sha = sha256_file(Path(checkpoint) / WEIGHTS_FILE)
    examples = [e for e in load_mixture(mixture, "train")
                if e["task"] == CHAT_TASK and tone_of(e) in ("plain", "joke")]
    if not examples:
        raise ValueError(f"{mixture}/train.jsonl has no chat examples")
    picked = np.random.default_rng(seed).permutation(len(examples))[:max_examples]
    examples = [examples[i] for i in sorted(picked)]
    counts: Counter[str] = Counter()
    pairs, thumbs = [], []
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for start in tqdm(range(0, len(examples), batch_size), desc="greedy replies", unit="batch"):
        batch = examples[start:start + batch_size]
        sources = [build_source(tokenizer, e["prompt"], task=spec.task, tone=tone_of(e) if spec.tones else None,
                                max_len=max_src_len).ids for e in batch]
        for example, result in zip(batch, generate(model, tokenizer, sources, config), strict=True):
            reply, own = example["response"].strip(), result.text.strip()
            if not own or own == reply:
                counts["skipped: the model's reply is the dataset's" if own else "skipped: empty model reply"] += 1
                continue
            common = {"checkpoint_sha256": sha, "tone": tone_of(example), "source_id": example["id"]}
            pairs.append({"prompt": example["prompt"], "chosen": reply, "rejected": own, **common})
            thumbs.append({"prompt": example["prompt"], "response": reply, "label": True, **common})
            thumbs.append({"prompt": example["prompt"], "response": own, "label": False, **common})
    out = Path(out)
    write_text_atomic(out / "pairs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs))
    write_text_atomic(out / "thumbs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in thumbs))
    counts["pairs"], counts["thumbs"] = len(pairs), len(thumbs)
    print(f"wrote {len(pairs):,} pairs to {out / 'pairs.jsonl'} and {len(thumbs):,} thumbs to "
          f"{out / 'thumbs.jsonl'}" + "".join(f"; {k} {v}" for k, v in counts.items() if k.startswith("skipped")),
          file=sys.stderr)
    return dict(counts)
