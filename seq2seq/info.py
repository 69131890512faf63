"""`seq2seq info --model DIR`: what a checkpoint holds and where it would run."""

from __future__ import annotations

import argparse
import json

from seq2seq.checkpoint import load_model
from seq2seq.device import resolve_device


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    config = model.config.to_dict()
    if args.json:
        print(json.dumps({"config": config, "parameters": model.num_parameters(), "device": str(device)}))
        return 0
    print(f"model: {args.model}")
    for key, value in config.items():
        print(f"  {key}: {value}")
    print(f"parameters: {model.num_parameters():,}")
    print(f"device: {device}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print a checkpoint's config, parameter count and device",
                                   description="Print a checkpoint's model config, its parameter count and "
                                               "the device it would run on.")
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, model.safetensors)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)
