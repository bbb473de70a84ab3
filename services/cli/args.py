"""Argument helpers shared by the CLI's commands: the config flags, durations, --json."""

from __future__ import annotations

import argparse
import json

from libs import security
from libs.config import SystemConfig, flag_overrides, load_config


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: $CCAA_CONFIG)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable)")


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90, 30m, 2h, 7d)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return seconds


def json_flag(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON document")


def emit(args: argparse.Namespace, data, *lines: str) -> None:
    """With --json: ``data`` as one JSON document; else the lines for people."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in lines:
            print(line)


def json_out(args: argparse.Namespace, body) -> bool:
    """With --json: print the reply as JSON (and say so); the caller prints nothing else."""
    if getattr(args, "json", False):
        print(json.dumps(body.model_dump(mode="json"), indent=2))
        return True
    return False


def load(args: argparse.Namespace) -> SystemConfig:
    """The config file and --set overrides a command was given; CurveZMQ set up from it."""
    config = load_config(args.config, overrides=flag_overrides(args.set))
    comm = config.communication
    security.configure(comm.curve, comm.keys_dir, comm.client_key)
    return config
