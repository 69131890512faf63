"""The `seq2seq` command. Each subcommand lives beside the code it runs, in a module whose `register(subparsers)`
adds it; `COMMANDS` lists them all. The recipes and data pipelines build on the library, so the CLI names their
modules rather than importing them: it is the one place where the layers meet (pyproject.toml's import-linter
contracts keep every other import one way). A listed module that fails to import is an error naming it, never a
missing command.

Errors: any exception a command raises becomes one line on standard error naming what went wrong, and exit
status 2 (130 on Ctrl-C); `--debug` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager

# The module that registers each command, in the order `seq2seq --help` lists them.
COMMANDS = {
    "info": "seq2seq.info",
    "data": "data_pipelines.cli",
    "pretrain": "pretrain.recipe",
    "finetune": "finetune.recipe",
    "chat": "seq2seq.repl",
    "generate": "seq2seq.repl",
    "classify": "seq2seq.classify",
    "eval": "seq2seq.evaluation",
    "serve": "seq2seq.serve",
}


class CommandUnavailable(RuntimeError):
    """A module listed in COMMANDS failed to import (a broken install, a missing dependency)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2seq",
        description="Pretrain, fine-tune, chat with and evaluate a small encoder-decoder Transformer.",
    )
    parser.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    registered: set[str] = set()
    for command, module_name in COMMANDS.items():
        if module_name in registered:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise CommandUnavailable(f"command {command!r}: its module {module_name} failed to import: "
                                     f"{error}") from error
        module.register(subparsers)
        registered.add(module_name)
    missing = sorted(set(COMMANDS) - set(subparsers.choices))
    if missing:
        raise CommandUnavailable(f"command {missing[0]!r}: {COMMANDS[missing[0]]}.register did not add it")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("SEQ2SEQ_DEBUG") == "1"
    argv = [arg for arg in argv if arg != "--debug"]  # accepted anywhere on the line
    command = "seq2seq"
    try:
        with ctrl_c_held():  # a Ctrl-C inside a library's import leaves it half-imported (numpy then recurses)
            parser = build_parser()
        args = parser.parse_args(argv)
        command = f"seq2seq {args.command}"
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `seq2seq classify ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0
    except Exception as error:  # noqa: BLE001 - the one place where any error becomes a line
        if debug:
            raise
        print(f"{command}: error: {describe(error)}", file=sys.stderr)
        return 2


@contextmanager
def ctrl_c_held():
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, None):
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def describe(error: BaseException) -> str:
    """One line for an error: its message, or its type when it has none; messages of errors that are not ours
    (an OSError, a MemoryError) keep their type so the line says what kind of failure it was."""
    message = " ".join(str(error).split()) if str(error) else ""
    if isinstance(error, (ValueError, FileNotFoundError)) and message:
        return message
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
