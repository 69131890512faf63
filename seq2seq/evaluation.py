"""Zero-, one- and few-shot evaluation, as in "Language Models are Few-Shot Learners" (Brown et al., 2020):
`seq2seq eval --model DIR --tasks NAME|FILE.yaml[,...] --shots 0,1,5 [--limit N] [--seed S] [--out FILE]`,
and perplexity on any text: `seq2seq eval --model DIR --text FILE...` (seq2seq/perplexity.py).

Conventions follow EleutherAI's lm-evaluation-harness so numbers compare:
- the context is the instruction, then k demonstrations, then the query, joined by a blank line ("\\n\\n");
  each demonstration is `question + target_delimiter + answer`, the target delimiter a space;
- demonstrations are drawn with a fixed seed from the demonstration split and never include the query item;
- `loglikelihood` tasks score each choice by log p(choice </s> | context) from the one scorer (`seq2seq.scoring`,
  which says why the end term is in); `acc` is the argmax of that score, `acc_norm` the argmax of the score
  divided by the choice's length in characters;
- `generate` tasks decode greedily and score exact match and token F1 (SQuAD normalisation).
For the encoder-decoder the context is the encoder's input (behind the task marker and tone token the model
was fine-tuned with, when it has them) and the answer is the decoder's: the decoder scores the choices, or
generates. When the context is longer than the model's source length, demonstrations are dropped (the last
first) before the query is cut from the left, and the report counts the dropped demonstrations.

A task file (YAML): see `TaskConfig` below, and seq2seq/eval_tasks/*.yaml for the built-in tasks, which ship with
the package. In `data` and `demo_data`, `{mixture}` stands for the mixture directory (`--mixture`). A template
names a row's fields only (`{prompt}`, `{labels[joke]}`); anything else is an error naming the task file. A data
row that a template cannot be filled from, or whose text is not valid Unicode, is an error naming the file and row.
"""

from __future__ import annotations

import argparse
import re
import string
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from seq2seq.config import from_dict, load_yaml, to_dict
from seq2seq.files import sha256_file, write_json_atomic, write_text_atomic
from seq2seq.metrics import baseline_answers, exact_match, mean_and_stderr, token_f1
from seq2seq.prompting import SHOT_SEPARATOR, TARGET_DELIMITER, InferenceSpec, render_with_shots
from seq2seq.records import InvalidRecords, read_jsonl
from seq2seq.scoring import continuation_log_probs
from seq2seq.tasks import PRETRAINING_TASK
from seq2seq.text import first_surrogate

BUILTIN_DIR = Path(__file__).resolve().parent / "eval_tasks"
DEFAULT_MIXTURE = "data/mixture/default"


@dataclass
class GenerationSettings:
    max_new_tokens: int = 32


@dataclass
class TaskConfig:
    name: str
    data: str  # a JSONL file: the mixture schema, or any JSONL with `fields` mapping; "{mixture}/test.jsonl"
    metric: Literal["loglikelihood", "generate", "perplexity"]  # perplexity: `data` is a text file
    query_split: str = "test"  # rows whose `split` field is this give the queries...
    demo_split: str = "train"  # ...and these the demonstrations
    demo_data: str | None = None  # demonstrations from another file (its rows, whatever their split)
    fields: dict[str, str] = field(default_factory=dict)  # our name -> the file's field, e.g. {prompt: question}
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose fields equal these, e.g. {task: speaker}
    instruction: str = ""
    template: str = "{prompt}"  # the question, formatted from a row's fields
    answer: str = "{response}"  # the answer, formatted from a row's fields
    demo_separator: str = SHOT_SEPARATOR  # "\n\n"
    target_delimiter: str = TARGET_DELIMITER  # " "
    choices: list[str] | None = None  # loglikelihood: fixed choices (e.g. [yes, no])...
    num_choices: int | None = None  # ...or the answer plus this many minus one other answers of the demo split
    task_marker: str | None = None  # fine-tuning task whose marker starts the encoder input (when the model has it)
    tone: str | None = "plain"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    src_len: int | None = None  # perplexity: tokens of context the encoder reads (None: the model's source length)
    tgt_len: int = 128  # perplexity: tokens each span predicts

    def __post_init__(self) -> None:
        if self.metric == "loglikelihood" and not self.choices and not self.num_choices:
            raise ValueError(f"task {self.name}: a loglikelihood task needs `choices` or `num_choices`")
        if self.num_choices is not None and self.num_choices < 2:
            raise ValueError(f"task {self.name}: num_choices must be at least 2")
        check_template(self.template, f"task {self.name}: template")
        check_template(self.answer, f"task {self.name}: answer")


def check_template(template: str, what: str) -> None:
    """A template may name a row's fields, and index into them (`{prompt}`, `{labels[joke]}`), nothing else:
    `{0}` (a positional field), `{prompt.upper}` (an attribute) and an unmatched brace are errors."""
    try:
        fields = [(name, conversion) for _, name, _, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as error:  # "Single '}' encountered in format string"
        raise ValueError(f"{what} {template!r}: {error}") from None
    for field_name, conversion in fields:
        name = re.match(r"[^.\[]*", field_name).group()  # before any [index]
        if not name or name.isdigit() or "." in field_name:
            raise ValueError(f"{what} {template!r}: {{{field_name}}} is not a field name; a template names a row's "
                             f"fields, e.g. {{prompt}} (write a literal brace as {{{{ or }}}})")
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"{what} {template!r}: unknown conversion !{conversion} (use !r, !s or !a, or none)")


def load_task(spec: str) -> TaskConfig:
    """A task by built-in name (seq2seq/eval_tasks/NAME.yaml) or by path; a bad key is named with the file."""
    path = Path(spec)
    if not path.suffix:
        path = BUILTIN_DIR / f"{spec}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))
            raise ValueError(f"unknown task {spec!r} (built-in: {known}; or pass a .yaml file)")
    try:
        return from_dict(TaskConfig, load_yaml(path))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


# ---------------------------------------------------------------------------------------------------------
# Items


@dataclass
class Item:
    question: str
    answer: str
    row: dict[str, Any]


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file; a line that is not a JSON object (or not UTF-8) is an error naming the file
    and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (build the mixture with `seq2seq data build`, or fix `data:`)")
    return [row for _, row in read_jsonl(path, InvalidRecords(skip=False))]


def to_items(task: TaskConfig, rows: list[dict[str, Any]], path: str, split: str | None) -> list[Item]:
    """Rows (fields renamed by `task.fields`) of `split` (None: all) that match `task.where`, as items."""
    items = []
    for number, row in enumerate(rows, 1):
        values = {**row, **{ours: row.get(theirs) for ours, theirs in task.fields.items()}}
        if split is not None and values.get("split") != split:
            continue
        if any(values.get(key) != value for key, value in task.where.items()):
            continue
        item = Item(fill(task.template, values, task, path, number), fill(task.answer, values, task, path, number),
                    values)
        for text in (item.question, item.answer):
            if (at := first_surrogate(text)) is not None:
                raise ValueError(f"{path}: row {number}: not valid Unicode (a lone surrogate, "
                                 f"{text[at]!r}, at character {at + 1} of {text[:at + 1]!r})")
        items.append(item)
    return items


def fill(template: str, values: dict[str, Any], task: TaskConfig, path: str, number: int) -> str:
    try:
        return template.format(**values).strip()
    except KeyError as error:
        raise ValueError(f"{path}: row {number} has no field {error} used by task {task.name}'s template "
                         f"{template!r} (map it with `fields:`)") from None
    except (IndexError, AttributeError, TypeError, ValueError) as error:  # {prompt[99]}, {prompt:d}
        raise ValueError(f"{path}: row {number}: task {task.name}'s template {template!r} cannot be filled "
                         f"from it: {error}") from None


def load_items(task: TaskConfig) -> tuple[list[Item], list[Item]]:
    rows = read_rows(task.data)
    if task.demo_data:
        queries = to_items(task, rows, task.data, None)
        demos = to_items(task, read_rows(task.demo_data), task.demo_data, None)
    else:
        queries = to_items(task, rows, task.data, task.query_split)
        demos = to_items(task, rows, task.data, task.demo_split)
    if not queries:
        raise ValueError(f"task {task.name}: no query items in {task.data} (split {task.query_split!r}, "
                         f"where {task.where})")
    return queries, demos


def sample_demonstrations(demos: list[Item], query: Item, k: int, rng: np.random.Generator) -> list[Item]:
    """k demonstrations drawn without replacement, never the query item itself (nor a copy of it)."""
    if k == 0:
        return []
    candidates = rng.permutation(len(demos))
    picked = []
    for i in candidates:
        if demos[i].question == query.question and demos[i].answer == query.answer:
            continue
        picked.append(demos[i])
        if len(picked) == k:
            break
    return picked


def choices_for(task: TaskConfig, item: Item, answers: list[str], rng: np.random.Generator) -> list[str]:
    if task.choices:
        return list(task.choices)
    others = [a for a in answers if a != item.answer]
    picked = rng.choice(others, size=min(len(others), task.num_choices - 1), replace=False).tolist()
    choices = [item.answer, *picked]
    return [choices[i] for i in rng.permutation(len(choices))]


# ---------------------------------------------------------------------------------------------------------
# Contexts


def render_context(task: TaskConfig, demos: list[Item], query: Item) -> str:
    """The few-shot text; with the default separator and delimiter it is exactly what fine-tuning "with
    exemplars" and the REPL's /shots put before a prompt."""
    return render_with_shots(query.question, [(d.question, d.answer) for d in demos], task.instruction,
                             task.target_delimiter, task.demo_separator)


@dataclass
class Context:
    ids: list[int]
    demos_dropped: int
    truncated_tokens: int


def encode_context(task: TaskConfig, demos: list[Item], query: Item, tokenizer, prefix: list[int],
                   max_len: int) -> Context:
    """`prefix` (task marker, tone) + context + </s>, within max_len: drop demonstrations (the last first),
    then cut the context from the left."""
    budget = max_len - len(prefix) - 1
    kept = list(demos)
    ids = tokenizer.encode(render_context(task, kept, query))
    while len(ids) > budget and kept:
        kept.pop()
        ids = tokenizer.encode(render_context(task, kept, query))
    truncated = max(0, len(ids) - budget)
    return Context([*prefix, *ids[truncated:], tokenizer.eos_id], len(demos) - len(kept), truncated)


# ---------------------------------------------------------------------------------------------------------
# Scoring


def model_prefix(task: TaskConfig, tokenizer, spec: InferenceSpec) -> list[int]:
    """The task marker and tone token to put first: the task's own when the model was fine-tuned (it has
    inference.json) and knows the marker; a pretrained-only model reads text behind its prefix-LM marker."""
    if not spec.fine_tuned:
        return [tokenizer.task_id(PRETRAINING_TASK)] if PRETRAINING_TASK in tokenizer.tasks else []
    prefix = []
    marker = task.task_marker or spec.task
    if marker and marker in tokenizer.tasks:
        prefix.append(tokenizer.task_id(marker))
    if task.tone and spec.tones:
        prefix.append(tokenizer.tone_id(task.tone))
    return prefix


def evaluate_task(model, tokenizer, task: TaskConfig, shots: list[int], limit: int | None, seed: int,
                  spec: InferenceSpec, max_len: int, batch_size: int = 32) -> list[dict[str, Any]]:
    if task.metric == "perplexity":
        return [evaluate_perplexity(model, tokenizer, task, max_len, batch_size)]
    queries, demos = load_items(task)
    if limit is not None and len(queries) > limit:
        queries = [queries[i] for i in sorted(np.random.default_rng(seed).choice(len(queries), limit, replace=False))]
    if max(shots) > 0 and len(demos) < max(shots) + 1:
        raise ValueError(f"task {task.name}: {len(demos)} demonstration items cannot give {max(shots)} shots")
    prefix = model_prefix(task, tokenizer, spec)
    answers = sorted({d.answer for d in demos} | {q.answer for q in queries})
    rows = []
    for k in shots:
        rng = np.random.default_rng([seed, k])
        contexts = [encode_context(task, sample_demonstrations(demos, q, k, rng), q, tokenizer, prefix, max_len)
                    for q in queries]
        row: dict[str, Any] = {"task": task.name, "shots": k, "n": len(queries),
                               "demos_dropped": sum(c.demos_dropped for c in contexts),
                               "truncated_queries": sum(c.truncated_tokens > 0 for c in contexts)}
        if task.metric == "loglikelihood":
            choice_rng = np.random.default_rng([seed, 10_000])  # the same choices at every k
            options = [choices_for(task, q, answers, choice_rng) for q in queries]
            pairs = [(c.ids, choice) for c, opts in zip(contexts, options) for choice in opts]
            with tqdm(total=len(pairs), desc=f"{task.name} {k}-shot", leave=False) as progress:
                scores = continuation_log_probs(model, tokenizer, [p[0] for p in pairs],
                                                [tokenizer.encode(p[1]) for p in pairs], batch_size, progress)
            acc, acc_norm, position = [], [], 0
            for q, opts in zip(queries, options):
                s = np.array(scores[position:position + len(opts)])
                position += len(opts)
                lengths = np.array([max(1, len(o)) for o in opts])
                acc.append(float(opts[int(s.argmax())] == q.answer))
                acc_norm.append(float(opts[int((s / lengths).argmax())] == q.answer))
            row["metrics"] = summarize_metric({"acc": acc, "acc_norm": acc_norm})
            row["baselines"] = multiple_choice_baselines(queries, options, demos, seed)
        else:
            from seq2seq.generation import GenerationConfig, generate

            predictions = []
            settings = GenerationConfig(max_new_tokens=task.generation.max_new_tokens, stop_strings=["\n\n"])
            for start in tqdm(range(0, len(contexts), batch_size), desc=f"{task.name} {k}-shot", leave=False):
                results = generate(model, tokenizer, [c.ids for c in contexts[start:start + batch_size]], settings)
                predictions += [r.text.strip() for r in results]
            row["metrics"] = summarize_metric({
                "exact_match": [exact_match(p, q.answer) for p, q in zip(predictions, queries)],
                "token_f1": [token_f1(p, q.answer) for p, q in zip(predictions, queries)]})
            row["baselines"] = generation_baselines(queries, demos, seed)
            row["examples"] = [{"query": q.question, "answer": q.answer, "prediction": p}
                               for q, p in list(zip(queries, predictions))[:3]]
        rows.append(row)
    return rows


def evaluate_perplexity(model, tokenizer, task: TaskConfig, max_len: int, batch_size: int) -> dict[str, Any]:
    """The pretraining measurement over a text file (seq2seq/perplexity.py): nats per token, nats and bits per
    character, with the counts. No demonstrations: one row, k = 0."""
    from seq2seq.perplexity import text_perplexity

    path = Path(task.data)
    if not path.is_file():
        raise FileNotFoundError(f"task {task.name}: text file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 (byte {error.start + 1})") from None
    src_len = task.src_len if task.src_len is not None else max_len - 2  # room for the task marker and </s>
    if not 0 <= src_len <= max_len - 2 or not 1 <= task.tgt_len <= max_len - 1:
        raise ValueError(f"task {task.name}: src_len must be in [0, {max_len - 2}] and tgt_len in [1, {max_len - 1}] "
                         f"for this model (max_seq_len {max_len})")
    figures = text_perplexity(model, tokenizer, text, src_len, task.tgt_len, batch_size)
    return {"task": task.name, "shots": 0, "n": int(figures["tokens"]), "chars": int(figures["chars"]),
            "src_len": src_len, "tgt_len": task.tgt_len, "demos_dropped": 0, "truncated_queries": 0,
            "metrics": {name: {"value": figures[name], "stderr": 0.0}
                        for name in ("nats_per_token", "nats_per_char", "bits_per_char")},
            "baselines": {}}


def text_task(path: str, src_len: int | None, tgt_len: int) -> TaskConfig:
    """A perplexity task over one text file (`seq2seq eval --text FILE`)."""
    return TaskConfig(name=Path(path).name, data=path, metric="perplexity", src_len=src_len, tgt_len=tgt_len)


def summarize_metric(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: dict(zip(("value", "stderr"), mean_and_stderr(v))) for name, v in values.items()}


def multiple_choice_baselines(queries: list[Item], options: list[list[str]], demos: list[Item],
                               seed: int) -> dict[str, float]:
    """Random choice among each query's options (expected accuracy) and the demonstration split's most common
    answer."""
    majority = baseline_answers([d.answer for d in demos], len(queries), np.random.default_rng(seed))["majority"]
    random = float(np.mean([1 / len(o) for o in options]))
    return {"random": random, "majority": float(np.mean([m == q.answer for m, q in zip(majority, queries)]))}


def generation_baselines(queries: list[Item], demos: list[Item], seed: int) -> dict[str, float]:
    """Exact match of answering every query with the demo split's most common answer, and with a random one."""
    answers = baseline_answers([d.answer for d in demos], len(queries), np.random.default_rng(seed))
    return {name: float(np.mean([exact_match(a, q.answer) for a, q in zip(said, queries)]))
            for name, said in answers.items()}


# ---------------------------------------------------------------------------------------------------------
# Reports


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | k | metric | value | stderr | n | demos dropped | random | majority |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for metric, stats in row["metrics"].items():
            baseline = row["baselines"] if metric in ("acc", "exact_match") else {}
            lines.append(f"| {row['task']} | {row['shots']} | {metric} | {stats['value']:.4f} | "
                         f"{stats['stderr']:.4f} | {row['n']} | {row['demos_dropped']} | "
                         f"{_fmt(baseline.get('random'))} | {_fmt(baseline.get('majority'))} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per task: each metric against k, with standard-error bars and the baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        task_rows = [r for r in rows if r["task"] == task]
        shots = [r["shots"] for r in task_rows]
        for metric in task_rows[0]["metrics"]:
            values = [r["metrics"][metric]["value"] for r in task_rows]
            errors = [r["metrics"][metric]["stderr"] for r in task_rows]
            axis.errorbar(shots, values, yerr=errors, marker="o", capsize=3, label=metric)
        for name, value in task_rows[0]["baselines"].items():
            axis.axhline(value, linestyle="--", linewidth=1, color="grey" if name == "random" else "black",
                         label=f"{name} baseline")
        axis.set_title(task)
        axis.set_xlabel("demonstrations (k)")
        axis.set_xticks(shots)
        if all(0 <= r['metrics'][m]['value'] <= 1 for r in task_rows for m in r['metrics']):
            axis.set_ylim(0, 1)  # accuracies; nats per token or character are not
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_eval(model_dir: str, task_specs: list[str], shots: list[int], limit: int | None, seed: int,
             out: Path | None, device: str = "auto", batch_size: int = 32,
             mixture: str = DEFAULT_MIXTURE, extra_tasks: tuple[TaskConfig, ...] = ()) -> dict[str, Any]:
    from seq2seq.checkpoint import WEIGHTS_FILE, load_pretrained
    from seq2seq.device import resolve_device
    from seq2seq.generation import max_new_tokens_limit

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1 (query items per task), got {limit}")
    if out is not None and out.suffix != ".json":
        raise ValueError(f"--out {out}: give the results JSON path (FILE.json); the table (.md) and plot (.png) "
                         f"go beside it")
    tasks = [with_mixture(load_task(spec), mixture) for spec in task_specs] + list(extra_tasks)
    if not tasks:
        raise ValueError("nothing to evaluate: give --tasks, --text, or both")
    model, tokenizer = load_pretrained(model_dir, resolve_device(device))
    for task in tasks:  # before any task runs
        if task.metric == "generate" and task.generation.max_new_tokens > max_new_tokens_limit(model.config):
            raise ValueError(f"task {task.name}: generation.max_new_tokens {task.generation.max_new_tokens} is more "
                             f"than this model can write ({max_new_tokens_limit(model.config)}: its max_seq_len - 1)")
    spec = InferenceSpec.load(model_dir)
    max_len = model.config.max_seq_len
    rows = []
    for task in tasks:
        rows += evaluate_task(model, tokenizer, task, shots, limit, seed, spec, max_len, batch_size)
    report = {
        "model": str(model_dir),
        "model_config": model.config.to_dict(),
        "checkpoint_sha256": sha256_file(Path(model_dir) / WEIGHTS_FILE),
        "settings": {"tasks": [to_dict(t) for t in tasks], "shots": shots, "limit": limit, "seed": seed,
                     "max_source_len": max_len, "fine_tuned": spec.fine_tuned},
        "results": rows,
    }
    table = markdown_table(rows)
    print(table)
    if out is not None:
        write_json_atomic(out, report)
        write_text_atomic(out.with_suffix(".md"), table + "\n")
        plot(rows, out.with_suffix(".png"))
        print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}", file=sys.stderr)
    return report


def with_mixture(task: TaskConfig, mixture: str) -> TaskConfig:
    """The task with `{mixture}` in its data paths replaced by the mixture directory."""
    return replace(task, data=task.data.replace("{mixture}", mixture),
                   demo_data=task.demo_data and task.demo_data.replace("{mixture}", mixture))


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots takes numbers like 0,1,5; got {text!r}") from None
    if not shots or any(s < 0 for s in shots):
        raise argparse.ArgumentTypeError(f"--shots takes non-negative numbers like 0,1,5; got {text!r}")
    return shots


def run(args: argparse.Namespace) -> int:
    texts = tuple(text_task(path, args.src_len, args.tgt_len) for path in args.text or ())
    run_eval(args.model, [t for t in (args.tasks or "").split(",") if t], args.shots, args.limit, args.seed,
             Path(args.out) if args.out else None, args.device, args.batch_size, args.mixture, texts)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="zero/one/few-shot evaluation on built-in or user tasks",
        description="Score a checkpoint on tasks with 0, 1 and k demonstrations in the prompt (lm-evaluation-"
                    "harness conventions); prints a markdown table, and with --out writes JSON, .md and a PNG plot.")
    parser.add_argument("--model", required=True, help="checkpoint directory")
    builtin = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))
    parser.add_argument("--tasks", help=f"comma-separated built-in names ({builtin}) or YAML files")
    parser.add_argument("--text", nargs="+", metavar="FILE",
                        help="perplexity of these text files as pretraining measures its val split: nats per token, "
                             "nats and bits per character")
    parser.add_argument("--src-len", type=int, help="--text: context tokens the encoder reads (default: the "
                                                    "model's source length less 2)")
    parser.add_argument("--tgt-len", type=int, default=128, help="--text: tokens each span predicts (default 128)")
    parser.add_argument("--shots", type=parse_shots, default=[0, 1, 5], help="comma-separated k values (0,1,5)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many query items per task")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", help="results JSON path, FILE.json (the table .md and plot .png go beside it)")
    parser.add_argument("--mixture", default=DEFAULT_MIXTURE,
                        help="mixture directory that built-in tasks read ({mixture} in a task's data paths)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.set_defaults(run=run)

