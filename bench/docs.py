"""Regenerate the measured tables of docs/results.md and README.md from the latest benchmark JSON.

    python -m bench.docs [--results FILE ...] [--results-dir bench/results] [--docs docs/results.md]
                         [--readme README.md] [--allow-quick] [--check]

Each generated block sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; what is outside the markers
(hand-measured sections no benchmark produces) is left as it is. Blocks: `machine`, `train`, `generate`, `serve`,
`pretrain`, `classify` (from the latest CPU run of `python -m bench`), `gpu` (the latest run of bench/gpu.sh), and
README's `headline`. By default the latest full run of each suite in bench/results/ is used; `--results` names
files instead (each fills its own suite's blocks). A `--quick` or `--dry-run` JSON is refused unless
`--allow-quick`: smoke-test numbers are not results. `--check` changes nothing and exits 1 when a file is stale.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from bench.record import RESULTS

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /bench:(?P=name) -->", re.DOTALL)
NO_RUN = {"cpu": "No full run recorded yet: on a quiet machine run `make bench` (`python -m bench`), then "
                 "`python -m bench.docs`.",
          "gpu": "No GPU run recorded yet: on a machine with one GPU run `bench/gpu.sh`, then `python -m bench.docs`."}


# -- numbers -------------------------------------------------------------------------------------------------------

def number(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ranged(figure: dict | None, digits: int = 0, scale: float = 1.0, unit: str = "") -> str:
    """A spread as 'median (min-max)'."""
    if not figure:
        return "n/a"
    return (f"{number(figure['median'] * scale, digits)}{unit} ({number(figure['min'] * scale, digits)}-"
            f"{number(figure['max'] * scale, digits)}{unit})")


def median(figure: dict | None, digits: int = 0, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if not figure else f"{number(figure['median'] * scale, digits)}{unit}"


def percent(figure: dict | None) -> str:
    """An MFU spread in percent: two decimals below 1%, where one would round tiny models to zero."""
    return ranged(figure, 1 if figure["median"] >= 0.01 else 2, 100, "%") if figure else "n/a"


def times(figure: dict | None) -> str:
    return "n/a" if not figure else f"{figure['median']:.2f}x ({figure['min']:.2f}-{figure['max']:.2f})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


# -- the runs --------------------------------------------------------------------------------------------------------

class Run:
    """One benchmark JSON and where it is, so that a block can say where its numbers come from."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text())

    def benchmark(self, name: str) -> dict | None:
        return self.data["benchmarks"].get(name)

    def source(self, doc: Path, lead: str = "From") -> str:
        """'From [file](link): commit, date, machine.' with the link relative to the document."""
        try:
            link = os.path.relpath(self.path.resolve(), doc.resolve().parent)
        except ValueError:
            link = str(self.path)
        git, machine = self.data["git"], self.data["machine"]
        where = machine["cpu"] + (f", {machine['gpu']['name']}" if machine.get("gpu") else "")
        return (f"{lead} [`{self.path.name}`]({link}): commit {git['commit']}"
                + (" with uncommitted changes" if git.get("dirty") else "")
                + f", {self.data['date'].replace('T', ' ').replace('Z', ' UTC')}, {where}, "
                  f"{machine['threads']} threads, torch {self.data['versions']['torch']}"
                + (", **quick run: not results**" if self.data["quick"] else "") + ".")


class Sources:
    """Which run each block comes from: the files named on the command line (one per suite), else the newest full
    (not --quick) run of the suite that ran that benchmark, so that a later `--only` run does not blank the rest."""

    def __init__(self, results_dir: Path, named: list[Run]):
        self.named = {run.data["suite"]: run for run in named}
        self.full = {suite: [Run(p) for p in sorted(results_dir.glob("*.json"), reverse=True)  # names sort by date
                             if not p.name.endswith("-quick.json") and (suite == "gpu") == p.name.endswith("-gpu.json")]
                     for suite in ("cpu", "gpu")}

    def run(self, suite: str, benchmark: str | None = None) -> Run | None:
        if suite in self.named:
            return self.named[suite]
        runs = self.full[suite]
        return next((r for r in runs if benchmark is None or benchmark in r.data["benchmarks"]), None)


def not_ok(run: Run | None, name: str, suite: str = "cpu") -> str | None:
    """Why a block has no figures (no run, the benchmark skipped or failed in it), or None."""
    if run is None:
        return NO_RUN[suite]
    entry = run.benchmark(name)
    if entry is None:
        return f"Not run in `{run.path.name}` (it ran {', '.join(run.data['benchmarks']) or 'nothing'})."
    if entry["status"] == "skipped":
        return f"Skipped in `{run.path.name}`: {entry['reason'].removeprefix('skipped: ')}."
    if entry["status"] == "error":
        return f"Failed in `{run.path.name}`: {entry['error']}"
    return None


# -- the blocks ------------------------------------------------------------------------------------------------------

def machine_block(run: Run | None, doc: Path) -> str:
    if run is None:
        return NO_RUN["cpu"]
    peak = run.data["gemm_peak"]
    m = run.data["machine"]
    return "\n".join([
        run.source(doc), "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, "
        f"{m['gpu']['name'] if m.get('gpu') else 'no GPU'}; {m['platform']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in run.data["versions"].items() if v) + ".",
        f"GEMM peak ({peak['size']} x {peak['size']} matrix product, {peak['threads']} threads, median (min-max) of "
        f"{peak['fp32']['gflops']['n']}): fp32 {ranged(peak['fp32']['gflops'])} GFLOP/s, bf16 "
        f"{ranged(peak['bf16']['gflops'])} GFLOP/s. Training MFU below is taken against it."])


def train_rows(entry: dict, precisions=("fp32", "bf16"), label=None) -> list[list[str]]:
    rows = []
    for precision in precisions:
        if precision in entry:
            r = entry[precision]
            rows.append([label(entry) if label else precision, ranged(r["BART"]["tokens_per_s"]),
                         ranged(r["ours"]["tokens_per_s"]), f"**{times(r['speedup'])}**",
                         percent(r["BART"].get("mfu")), percent(r["ours"].get("mfu"))])
    return rows


def flops_note(entry: dict) -> str:
    return ("FLOPs per token (bench/flops.py, from the model config):\n\n"
            + "\n".join(f"- {line}" for line in entry["flops"]["derivation"]))


def train_block(run: Run | None, doc: Path) -> str:
    if why := not_ok(run, "train"):
        return why
    entry = run.benchmark("train")
    s = entry["settings"]
    return "\n".join([
        run.source(doc), "",
        f"Batch {s['batch']} x ({s['src_len']} source + {s['tgt_len']} target tokens), d_model {s['d_model']}, "
        f"{s['n_encoder_layers']}+{s['n_decoder_layers']} layers, vocab {s['vocab_size']:,}; {s['steps']} timed "
        f"steps of each system after {s['warmup']} warm-up step{'s' if s['warmup'] != 1 else ''}, the two "
        f"alternating; median (min-max) over the steps. ours / BART is BART's step time over ours, step by step.", "",
        table(["precision", "BART tokens/s", "ours tokens/s", "ours / BART", "BART MFU", "ours MFU"],
              train_rows(entry)), "", flops_note(entry)])


def generate_rows(entry: dict) -> list[list[str]]:
    rows = []
    for r in entry["decoding"]:
        bart = "n/a" if "BART_tokens_per_s" not in r else f"{ranged(r['BART_tokens_per_s'])} ({r['BART_mode']})"
        mode = f"**{r['mode']}**" if r["mode"] == "compiled" else r["mode"]
        rows.append([str(r["batch"]), mode, ranged(r["ours_tokens_per_s"]), bart, times(r.get("speedup"))])
    return rows


def first_token_rows(entry: dict) -> list[list[str]]:
    return [[str(r["batch"]), r["mode"], ranged(r["ours_ms"], 1, unit=" ms"), ranged(r.get("BART_ms"), 1, unit=" ms")]
            for r in entry["time_to_first_token"]]


def generate_block(run: Run | None, doc: Path) -> str:
    if why := not_ok(run, "generate"):
        return why
    entry = run.benchmark("generate")
    s = entry["settings"]
    compiled = [r for r in entry["decoding"] if "compile_s" in r]
    return "\n".join([
        run.source(doc), "",
        f"Greedy decoding of exactly {s['new_tokens']} new tokens from a {s['src_len']}-token random source, "
        f"{s['repeats']} timed calls of each case (uncached: half as many), all cases interleaved; new tokens/s, "
        f"median (min-max).", "",
        table(["batch", "ours: decoding", "ours new tokens/s", "BART new tokens/s", "ours / BART"],
              generate_rows(entry)), "",
        "Time to first token (the same call with one new token):", "",
        table(["batch", "ours: decoding", "ours", "BART (cache)"], first_token_rows(entry))]
        + ([] if not compiled else ["", "Compiling (the first call of each shape, in the warm-up): " + ", ".join(
            f"batch {r['batch']}: {r['compile_s']:.1f} s" for r in compiled) + "."]))


def serve_rows(entry: dict) -> list[list[str]]:
    ms = lambda value: "n/a" if value is None else f"{value * 1000:,.1f}"  # noqa: E731
    return [[f"({r.get('system')})", str(r.get("concurrency")),
             f"{r.get('completed')}/{r.get('requests')}", number(r.get("requests_per_s"), 2),
             number(r.get("output_tokens_per_s"), 1), ms(r.get("ttft_p50_s")), ms(r.get("ttft_p99_s")),
             ms(r.get("itl_p50_s")), ms(r.get("tpot_p50_s")), ms(r.get("e2e_p50_s"))]
            for r in entry.get("results", [])]


def serve_block(run: Run | None, doc: Path, suite: str = "cpu") -> str:
    if why := not_ok(run, "serve", suite):
        return why
    entry = run.benchmark("serve")
    settings = entry.get("settings", {})
    systems = "; ".join(f"({key}) {text}" for key, text in entry.get("systems", {}).items())
    lines = ([run.source(doc), ""] if suite == "cpu" else []) + [
             f"Command: `python {entry.get('command', 'bench/bench_serve.py')}`. {systems}. Greedy, max_tokens "
             f"{settings.get('max_tokens', 'n/a')}; latencies in ms (p50 unless marked).", "",
             table(["system", "concurrency", "done", "requests/s", "output tokens/s", "TTFT", "TTFT p99", "ITL",
                    "TPOT", "end to end"], serve_rows(entry))]
    checks = entry.get("targets") or []
    if checks:
        lines += ["", "Targets: " + "; ".join(
            f"{c.get('target')}: {({True: 'pass', False: 'fail'}).get(c.get('passed'), 'n/a')}" for c in checks) + "."]
    if entry.get("exit_code"):
        lines += ["", f"bench_serve.py exited with {entry['exit_code']} (failed requests or missed targets)."]
    return "\n".join(lines)


def pretrain_rows(entry: dict) -> list[list[str]]:
    rows = []
    for r in entry["evaluations"]:
        reference = r.get("reference")
        rows.append([f"{r['at_minutes']:g} min", f"{r['step']:,}", f"**{r['val_nats_per_char']:.3f}**",
                     f"{r['val_bits_per_char']:.3f}",
                     "" if reference is None else f"{reference['val_nats_per_char']:.3f} ({reference['how']}, "
                                                  f"{reference['minutes']:.1f} min)"])
    final = entry.get("final")
    if final:
        rows.append([f"{final['train_minutes']:.1f} min (end)", f"{final['step']:,}",
                     f"**{final['val_nats_per_char']:.3f}**", f"{final['val_bits_per_char']:.3f}", ""])
    return rows


def pretrain_block(run: Run | None, doc: Path) -> str:
    if why := not_ok(run, "pretrain"):
        return why
    entry = run.benchmark("pretrain")
    return "\n".join([
        run.source(doc), "",
        f"Command: `{entry['settings']['command']}`; full-val evaluations at those training times (evaluation "
        f"not counted); {entry['stopped']}. Training tokens/s (source + target) over the logged windows: "
        f"{ranged(entry['tokens_per_s'])}. One run: CPU training is not bit-reproducible, so a rerun differs. The "
        f"reference is nanoGPT's CPU recipe (character-level, ../shared/reference/nanogpt-cpu.md, recipe 3) on the "
        f"same val split, interpolated at the same minute (its minutes count evaluations and start-up too).", "",
        table(["training time", "step", "val nats/char", "val bits/char", "nanoGPT, same split"],
              pretrain_rows(entry))])


def classify_rows(entry: dict) -> list[list[str]]:
    return [[r["task"], f"{r['n']:,}", f"{r['model']['value']:.3f} ± {r['model']['stderr']:.3f}", r["baseline"],
             f"{r['baseline_accuracy']['value']:.3f}", f"{r['majority']['value']:.3f}"] for r in entry["rows"]]


def classify_block(run: Run | None, doc: Path) -> str:
    if why := not_ok(run, "classify"):
        return why
    entry = run.benchmark("classify")
    s = entry["settings"]
    return "\n".join([
        run.source(doc), "",
        f"Model: `{s['model']}`, mixture `{s['mixture']}`" + (f", first {s['limit']} test rows per task"
                                                                if s.get("limit") else ", every test row")
        + "; accuracy ± its standard error.", "",
        table(["task", "n", "model", "baseline", "baseline accuracy", "majority class"], classify_rows(entry))])


def gpu_block(run: Run | None, doc: Path) -> str:
    if run is None:
        return NO_RUN["gpu"]
    lines = [run.source(doc), ""]
    device = run.benchmark("device") or {}
    peak = run.data.get("gemm_peak")
    if peak:
        lines.append(f"Device: {device.get('torch_device_name') or device.get('device', 'n/a')}. GEMM peak "
                     f"({peak['size']} x {peak['size']}): fp32 {ranged(peak['fp32']['gflops'])} GFLOP/s"
                     + (" (TF32 off)" if peak.get("tf32") is False else "")
                     + f", bf16 {ranged(peak['bf16']['gflops'])} GFLOP/s.")
    lines += ["", "**Training, bf16 autocast**:", ""]
    if why := not_ok(run, "train", "gpu"):
        lines.append(why)
    else:
        entry = run.benchmark("train")
        rows = []
        for key in ("bench", "base"):
            if key in entry:
                s = entry[key]["settings"]
                rows += train_rows(entry[key], ("bf16",), lambda e, s=s: (
                    f"d_model {s['d_model']}, {s['n_encoder_layers']}+{s['n_decoder_layers']} layers, ffn "
                    f"{s['d_ff']}; batch {s['batch']} x ({s['src_len']} + {s['tgt_len']}); "
                    f"{e['flops']['flops_per_token'] / 1e6:.1f} MFLOP/token"))
        lines.append(table(["dimensions", "BART tokens/s", "ours tokens/s", "ours / BART", "BART MFU", "ours MFU"],
                           rows))
    lines += ["", "**Greedy generation** (new tokens/s, median (min-max)):", ""]
    if why := not_ok(run, "generate", "gpu"):
        lines.append(why)
    else:
        entry = run.benchmark("generate")
        compiled = entry.get("compiled", {})
        rows = generate_rows(entry) + (generate_rows({"decoding": [r for r in compiled["decoding"]
                                                                   if r["mode"] == "compiled"]})
                                       if compiled.get("status") == "ok" else [])
        lines.append(table(["batch", "ours: decoding", "ours new tokens/s", "BART new tokens/s", "ours / BART"],
                           rows))
        if compiled.get("status") != "ok":
            lines.append(f"\nCompiled decoding: {compiled.get('reason') or compiled.get('error') or 'not run'}.")
        lines += ["", table(["batch", "ours: decoding", "time to first token, ours", "BART (cache)"],
                            first_token_rows(entry))]
    lines += ["", "**Pretraining** `configs/pretrain/shakespeare-gpu.yaml` on Tiny Shakespeare:", ""]
    if why := not_ok(run, "pretrain", "gpu"):
        lines.append(why)
    else:
        entry = run.benchmark("pretrain")
        published = entry["reference"]["gpu"]
        lines += [f"Command: `{entry['settings']['command']}`; {entry['stopped']}. Training tokens/s: "
                  f"{ranged(entry['tokens_per_s'])}. nanoGPT's published figure ({published['source']}): "
                  f"{published['val_nats_per_char']} nats/char.", "",
                  table(["training time", "step", "val nats/char", "val bits/char", "nanoGPT CPU curve"],
                        pretrain_rows(entry))]
    lines += ["", "**Serving**:", "", serve_block(run, doc, "gpu")]
    return "\n".join(lines)


def headline_block(sources: Sources, doc: Path) -> str:
    rows, used = [], {"cpu": [], "gpu": []}

    def ok(suite: str, name: str) -> dict | None:
        run = sources.run(suite, name)
        if run is None or not_ok(run, name):
            return None
        if run not in used[suite]:
            used[suite].append(run)
        return run.benchmark(name)

    if entry := ok("cpu", "pretrain"):
        last = (entry.get("final") or (entry["evaluations"] or [None])[-1])
        if last:
            minutes = last.get("train_minutes", last.get("at_minutes"))
            reference = entry["evaluations"][-1].get("reference") if entry["evaluations"] else None
            rows.append([f"pretraining, Tiny Shakespeare val, {minutes:.1f} min", f"**{last['val_nats_per_char']:.3f}**"
                         f" nats/char", "" if reference is None else
                         f"nanoGPT CPU recipe {reference['val_nats_per_char']:.3f} at {reference['minutes']:.1f} min",
                         "`python bench/bench_pretrain.py`"])
    if entry := ok("cpu", "classify"):
        for r in entry["rows"]:
            rows.append([f"{r['task']}, n = {r['n']:,}", f"{r['model']['value']:.3f} ± {r['model']['stderr']:.3f}",
                         f"{r['baseline']} {r['baseline_accuracy']['value']:.3f}",
                         "`python bench/bench_classify.py --model runs/finetune/final`"])
    if entry := ok("cpu", "train"):
        present = [p for p in ("fp32", "bf16") if p in entry]
        rows.append([f"training tokens/s, {' / '.join(present)}",
                     " / ".join(median(entry[p]["ours"]["tokens_per_s"]) for p in present) + " (MFU "
                     + " / ".join(percent(entry[p]["ours"].get("mfu")).split(" ")[0] for p in present) + ")",
                     "BART " + " / ".join(median(entry[p]["BART"]["tokens_per_s"]) for p in present) + ": **"
                     + " / ".join(f"{entry[p]['speedup']['median']:.2f}x" for p in present) + "**",
                     "`python bench/bench_train.py`"])
    if entry := ok("cpu", "generate"):
        rows += generate_headline(entry, entry["decoding"], "`python bench/bench_generate.py`")
    if entry := ok("cpu", "serve"):
        rows += serve_headline(entry, "`python bench/bench_serve.py`")
    if entry := ok("gpu", "train"):
        for key in ("bench", "base"):
            if key in entry and "bf16" in entry[key]:
                r, s = entry[key]["bf16"], entry[key]["settings"]
                rows.append([f"GPU training tokens/s, bf16, d_model {s['d_model']}",
                             f"{median(r['ours']['tokens_per_s'])} (MFU {percent(r['ours'].get('mfu')).split(' ')[0]})",
                             f"BART {median(r['BART']['tokens_per_s'])}: **{r['speedup']['median']:.2f}x**",
                             "`bench/gpu.sh`"])
    if entry := ok("gpu", "generate"):
        compiled = entry.get("compiled", {})
        decoding = entry["decoding"] + ([r for r in compiled["decoding"] if r["mode"] == "compiled"]
                                        if compiled.get("status") == "ok" else [])
        rows += generate_headline(entry, decoding, "`bench/gpu.sh`", "GPU ")
    if entry := ok("gpu", "pretrain"):
        if entry["evaluations"]:
            last = entry["evaluations"][-1]
            rows.append([f"GPU pretraining, Tiny Shakespeare val, {last['at_minutes']:g} min",
                         f"**{last['val_nats_per_char']:.3f}** nats/char",
                         f"nanoGPT on an A100 {entry['reference']['gpu']['val_nats_per_char']} at ~3 min",
                         "`bench/gpu.sh`"])
    if entry := ok("gpu", "serve"):
        rows += serve_headline(entry, "`bench/gpu.sh`", "GPU ")
    sources = [run.source(doc, f"{suite.upper()} rows from") for suite in ("cpu", "gpu") for run in used[suite]]
    sources += [NO_RUN[suite] for suite in ("cpu", "gpu") if not used[suite]]
    parts = ["\n".join(f"- {line}" for line in sources)]  # one list: the runs the rows come from
    commands = [row[-1] for row in rows]
    for i in range(len(rows) - 1, 0, -1):  # a command repeated from the row above reads "same"
        if commands[i] == commands[i - 1]:
            rows[i][-1] = "same"
    if rows:
        parts.append(table(["result", "ours", "baseline", "command"], rows))
    return "\n\n".join(parts)


def generate_headline(entry: dict, decoding: list[dict], command: str, prefix: str = "") -> list[list[str]]:
    rows = []
    for batch in entry["settings"]["batches"]:
        found = [r for r in decoding if r["batch"] == batch and r["mode"] != "no cache" and "speedup" in r]
        if found:
            rows.append([f"{prefix}greedy generation, batch {batch}: {' / '.join(r['mode'] for r in found)}",
                         " / ".join(median(r["ours_tokens_per_s"]) for r in found) + " new tokens/s",
                         f"BART {median(found[0]['BART_tokens_per_s'])}: "
                         + " / ".join(f"{r['speedup']['median']:.2f}x" for r in found), command])
    return rows


def serve_headline(entry: dict, command: str, prefix: str = "") -> list[list[str]]:
    results = entry.get("results") or []
    if not results:
        return []
    level = 16 if any(r.get("concurrency") == 16 for r in results) else max(r.get("concurrency", 0) for r in results)
    at = {r.get("system"): r for r in results if r.get("concurrency") == level}
    b, c = at.get("b"), at.get("c")
    if not b:
        return []
    baseline = "" if not c else f"BART per request {number(c.get('output_tokens_per_s'))}"
    ttft = b.get("ttft_p99_s")
    return [[f"{prefix}serving, concurrency {level}, continuous batching",
             f"{number(b.get('output_tokens_per_s'))} output tokens/s, TTFT p99 "
             f"{'n/a' if ttft is None else number(ttft * 1000)} ms", baseline, command]]


# -- the files -------------------------------------------------------------------------------------------------------

def fill(text: str, blocks: dict[str, str], path: Path) -> str:
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in blocks:
            raise SystemExit(f"bench.docs: {path}: unknown block <!-- bench:{name} --> (known: {', '.join(blocks)})")
        return f"<!-- bench:{name} -->\n{blocks[name].rstrip()}\n<!-- /bench:{name} -->"

    opened = re.findall(r"<!-- bench:([\w-]+) -->", text)
    closed = re.findall(r"<!-- /bench:([\w-]+) -->", text)
    if opened != closed:
        raise SystemExit(f"bench.docs: {path}: unmatched markers (opened {opened}, closed {closed})")
    return MARKER.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", action="append", default=[], help="a benchmark JSON (repeatable)")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where to look for the latest runs")
    parser.add_argument("--docs", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    parser.add_argument("--allow-quick", action="store_true", help="render --quick / --dry-run JSON too")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    named = [Run(Path(name)) for name in args.results]
    for run in named:
        if run.data["quick"] and not args.allow_quick:
            print(f"bench.docs: {run.path} is a --quick (or --dry-run) run: smoke-test numbers are not results. "
                  f"Pass --allow-quick to render it anyway.", file=sys.stderr)
            return 2
    sources = Sources(Path(args.results_dir), named)
    stale = []
    for path, blocks in ((Path(args.docs), lambda doc: {
            "machine": machine_block(sources.run("cpu", "train") or sources.run("cpu"), doc),  # MFU's peak
            "train": train_block(sources.run("cpu", "train"), doc),
            "generate": generate_block(sources.run("cpu", "generate"), doc),
            "serve": serve_block(sources.run("cpu", "serve"), doc),
            "pretrain": pretrain_block(sources.run("cpu", "pretrain"), doc),
            "classify": classify_block(sources.run("cpu", "classify"), doc),
            "gpu": gpu_block(sources.run("gpu"), doc)}),
                         (Path(args.readme), lambda doc: {"headline": headline_block(sources, doc)})):
        text = path.read_text()
        new = fill(text, blocks(path), path)
        if new != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"bench.docs: out of date: {', '.join(stale)} (run python -m bench.docs)", file=sys.stderr)
        return 1
    print(("out of date: " if args.check else "updated: ") + (", ".join(stale) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
