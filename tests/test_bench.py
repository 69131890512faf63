"""The benchmark runner and the docs generator: `python -m bench --quick` writes one JSON holding the machine,
the versions, the commit and every figure with its spread; `python -m bench.docs` fills the markers from it, leaves
everything outside them alone, and refuses a quick run unless told; the MFU's FLOP count is the issue's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ sits beside the installed packages, not among them

from bench.flops import training_flops_per_token  # noqa: E402
from bench.models import our_config  # noqa: E402

MARKED = re.compile(r"(<!-- bench:([\w-]+) -->\n).*?(<!-- /bench:\2 -->)", re.DOTALL)


def test_training_flops_per_token_at_the_benchmark_dimensions():
    flops = training_flops_per_token(our_config("bench"), src_len=128, tgt_len=128)
    # 6 x 4,718,592 weights a token meets on average + 12 x 256 x 196,608 / 256 for attention
    assert flops["weights_term"] == 28_311_552
    assert flops["attention_term"] == 2_359_296
    assert flops["flops_per_token"] == pytest.approx(30.67e6, rel=1e-3)  # the "~30.6 MFLOP per token"
    assert flops["derivation"][-1] == "total: 30.67 MFLOP per token"


def assert_spread(figure: dict) -> None:
    assert figure["min"] <= figure["q1"] <= figure["median"] <= figure["q3"] <= figure["max"]
    assert figure["n"] == len(figure["values"]) >= 1


@pytest.mark.slow
def test_quick_run_writes_figures_with_spread_and_docs_render_them(tmp_path):
    pytest.importorskip("transformers")  # the `bench` extra
    results = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "train,generate", "--results-dir",
                    str(results)], cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    [path] = results.glob("*.json")
    assert path.name.endswith("-quick.json")
    record = json.loads(path.read_text())
    assert record["suite"] == "cpu" and record["quick"] is True
    assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1 and record["machine"]["threads"] >= 1
    assert record["versions"]["torch"] == torch.__version__
    assert re.fullmatch(r"[0-9a-f]{7,}|unknown", record["git"]["commit"])
    for precision in ("fp32", "bf16"):
        assert_spread(record["gemm_peak"][precision]["gflops"])
    assert set(record["benchmarks"]) == {"train", "generate"}
    train = record["benchmarks"]["train"]
    assert train["status"] == "ok" and train["flops"]["derivation"]
    for precision in ("fp32", "bf16"):
        for system in ("BART", "ours"):
            for figure in ("ms_per_step", "tokens_per_s", "mfu"):
                assert_spread(train[precision][system][figure])
        assert_spread(train[precision]["speedup"])
    generate = record["benchmarks"]["generate"]
    assert {row["batch"] for row in generate["decoding"]} == {1, 8}
    for row in generate["decoding"]:
        for figure in ("ours_tokens_per_s", "BART_tokens_per_s", "speedup"):
            assert_spread(row[figure])
    for row in generate["time_to_first_token"]:
        for figure in ("ours_ms", "BART_ms"):
            assert_spread(row[figure])

    docs, readme = tmp_path / "results.md", tmp_path / "README.md"
    docs.write_text((REPO / "docs" / "results.md").read_text())
    readme.write_text((REPO / "README.md").read_text())
    before = docs.read_text(), readme.read_text()
    command = [sys.executable, "-m", "bench.docs", "--results", str(path), "--results-dir", str(tmp_path / "none"),
               "--docs", str(docs), "--readme", str(readme)]
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--allow-quick" in refused.stderr
    assert (docs.read_text(), readme.read_text()) == before
    subprocess.run([*command, "--allow-quick"], cwd=REPO, check=True, capture_output=True, timeout=60)
    text = docs.read_text()
    train_block = re.search(r"<!-- bench:train -->\n(.*?)<!-- /bench:train -->", text, re.DOTALL)[1]
    assert path.name in train_block and "quick run: not results" in train_block
    assert f"{train['bf16']['ours']['tokens_per_s']['median']:,.0f}" in train_block
    assert "Not run in" in re.search(r"<!-- bench:pretrain -->\n(.*?)<!--", text, re.DOTALL)[1]
    assert "No GPU run recorded yet" in re.search(r"<!-- bench:gpu -->\n(.*?)<!--", text, re.DOTALL)[1]
    headline = re.search(r"<!-- bench:headline -->\n(.*?)<!--", readme.read_text(), re.DOTALL)[1]
    assert "training tokens/s" in headline and "greedy generation, batch 8" in headline
    for old, new in zip(before, (text, readme.read_text())):  # outside the markers nothing changed
        assert MARKED.sub(r"\1\3", old) == MARKED.sub(r"\1\3", new)
