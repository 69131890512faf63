"""The `seq2seq` command. Each subcommand lives beside the code it runs and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, function) pairs; each function takes the subparsers object and adds its commands.
COMMANDS = [
    ("seq2seq.info", "register"),
    ("data_pipelines.cli", "register"),
    ("pretrain.recipe", "register"),
    ("finetune.recipe", "register"),
    ("seq2seq.repl", "register"),
    ("seq2seq.evaluation", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2seq",
        description="Pretrain, fine-tune, chat with and evaluate a small encoder-decoder Transformer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, function in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # a command not built yet
                continue
            raise
        getattr(module, function)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"seq2seq {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
