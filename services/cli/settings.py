"""Every setting, from the configuration models themselves: `ccaa config show` prints the
effective configuration (defaults < file < CCAA_* environment < --set), and README's
settings reference is generated here, so neither can drift from the code:

    python -m services.cli.settings --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from libs.config import CONFIG_ENV, RoleConfig, SystemConfig

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- BEGIN SETTINGS: python -m services.cli.settings --write -->"
END = "<!-- END SETTINGS -->"
#: settings whose values are secrets: shown as "(set)" by `ccaa config show`
SECRETS = {"token", "http_token", "headers"}


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds, and how: "" (itself), "NAME" (a dict of them), "[]" (a
    list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and args and isinstance(args[-1], type) and issubclass(args[-1],
                                                                              BaseModel):
        return args[-1], "NAME"
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    return None, ""


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None \
        else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "none")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel)
                                                 for v in value.values()):
        return ", ".join(value)
    return json.dumps(value, default=str)


def rows(model: type[BaseModel] = SystemConfig, prefix: str = "") -> Iterator[tuple[str, str,
                                                                                  str, str]]:
    """(setting, type, default, description) for every leaf setting."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        inner, how = _model_of(info.annotation)
        if inner is not None:
            if how:
                yield (path, f"{'list' if how == '[]' else 'table'} of {inner.__name__}",
                       _default(info), info.description or "")
            sub = {"": f"{path}.", "NAME": f"{path}.{'ROLE' if inner is RoleConfig else 'NAME'}.",
                   "[]": f"{path}[]."}[how]
            yield from rows(inner, sub)
            continue
        yield path, _type_name(info.annotation), _default(info), info.description or ""


def reference() -> str:
    lines = ["| setting | type | default | what it does |", "|---|---|---|---|"]
    for path, type_, default, description in rows():
        cell = description.replace("|", "\\|").replace("\n", " ")
        default = default.replace("|", "\\|")
        lines.append(f"| `{path}` | {type_.replace('|', ' or ')} | "
                     f"{'`' + default + '`' if default else ''} | {cell} |")
    return "\n".join(lines) + "\n"


def write_readme(readme: Path = README) -> bool:
    """Put the reference between README's markers; whether it changed."""
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{reference()}{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def redacted(config: SystemConfig) -> dict[str, Any]:
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("(set)" if k in SECRETS and v else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(config.model_dump(mode="json"))


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """TOML for a configuration: a table's own values, then its sub-tables, then its arrays
    of tables. An unset value (None) is a comment, as TOML has no null."""
    lines, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        elif value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = "".join(line + "\n" for line in lines)
    for key, value in tables:
        text += f"\n[{prefix}{key}]\n" + to_toml(value, f"{prefix}{key}.")
    for key, items in arrays:
        for item in items:
            text += f"\n[[{prefix}{key}]]\n" + to_toml(item, f"{prefix}{key}.")
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    from services.cli.args import config_args

    p = sub.add_parser(
        "config", help="`show`: the effective configuration (secrets hidden)",
        description="`ccaa config show` prints the configuration every service would run "
        "with: defaults, then the config file (--config or $CCAA_CONFIG), then CCAA_* "
        "environment variables, then --set. Secrets (tokens, webhook headers) show as "
        "(set). README's Settings section describes every key.")
    config_args(p)
    p.add_argument("action", choices=["show"])
    p.add_argument("--json", action="store_true", help="as JSON instead of TOML")


def cmd_config(args: argparse.Namespace) -> int:
    from services.cli.args import load

    config = load(args)
    shown = redacted(config)
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        source = args.config or os.environ.get(CONFIG_ENV) or "(no file: defaults)"
        print(f"# the effective configuration; file: {source}")
        sys.stdout.write(to_toml(shown))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.cli.settings",
                                     description="Print the settings reference, or update "
                                                 "README's with --write.")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        print("README.md updated" if write_readme() else "README.md already up to date")
    else:
        sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
