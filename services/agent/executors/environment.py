"""The environment a task's command runs with: a minimal one, not the agent's. An
agent's environment may hold credentials (ANTHROPIC_API_KEY, cloud and registry tokens),
and task and gate commands come from requests and from the repository's own .ccaa.toml: a
gate that prints its environment would otherwise put the keys into results, the database
and events. A role may pass more through by name (``agent_hierarchy.<role>.env_passthrough``,
shell-style patterns such as ``NPM_*``)."""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from typing import Callable, Iterable, Mapping

#: what any command needs to run as the user would in a shell, and nothing secret
BASELINE = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TERM",
            "TZ", "TMPDIR", "TMP", "TEMP", "VIRTUAL_ENV", "CONDA_PREFIX", "PYENV_*",
            # markers, no secrets: how the processes a dead stack or agent left are found
            "CCAA_RUN_DIR", "CCAA_AGENT_TOKEN")


def task_env(passthrough: Iterable[str] = (), environ: Mapping[str, str] | None = None
             ) -> dict[str, str]:
    """The agent's variables whose names match the baseline or ``passthrough``."""
    environ = os.environ if environ is None else environ
    match = _matcher(tuple(passthrough))
    return {name: value for name, value in environ.items() if match(name)}


@functools.lru_cache(maxsize=64)
def _matcher(passthrough: tuple[str, ...]) -> Callable[[str], object]:
    """One compiled pattern for the baseline and ``passthrough`` (a task's environment is
    made for every task: one regular expression match per variable, not one fnmatch per
    variable and pattern)."""
    return re.compile("|".join(fnmatch.translate(p) for p in (*BASELINE, *passthrough))).match
