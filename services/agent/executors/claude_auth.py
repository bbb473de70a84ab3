"""Can Claude Code authenticate here? Asked of the CLI itself (`claude auth status`, which
answers offline in a fraction of a second and knows every way: an API key, the CLI's own
login, a key helper, Bedrock or Vertex), with the environment the agents will give it.
And: did a run fail because it could not authenticate (then running it again is useless)."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Mapping

#: what Claude Code answers when its credentials are missing, wrong or expired
AUTH_FAILURE = re.compile(r"not logged in|invalid api key|please run /login|"
                          r"authentication_error|oauth token has expired|invalid x-api-key|"
                          r"invalid bearer token", re.IGNORECASE)


@dataclass
class AuthStatus:
    ok: bool
    method: str  # api_key, claude.ai, ... or none
    detail: str


def how_to_fix(cli: str) -> str:
    return (f"set ANTHROPIC_API_KEY in the environment ccaa runs in (for `ccaa up`, "
            f"`ccaa node`, or the unit's EnvironmentFile), or log Claude Code in once as "
            f"user {getpass.getuser()}: `ccaa claude login` (runs `{cli} auth login`)")


def auth_status(cli: str, env: Mapping[str, str], timeout: float = 30.0) -> AuthStatus:
    """Whether the CLI at ``cli``, given ``env``, can authenticate."""
    child = {k: v for k, v in env.items() if k != "CLAUDECODE"}
    try:
        done = subprocess.run([cli, "auth", "status", "--json"], capture_output=True,
                              text=True, timeout=timeout, env=child, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return AuthStatus(False, "none", f"`{cli} auth status` could not run: {exc}")
    try:
        status = json.loads(done.stdout)
    except ValueError:
        tail = (done.stderr or done.stdout).strip()[-300:]
        return AuthStatus(False, "none", f"`{cli} auth status` answered no JSON "
                                         f"(exit {done.returncode}): {tail}")
    method = str(status.get("authMethod") or "none")
    if status.get("loggedIn"):
        source = status.get("apiKeySource")
        return AuthStatus(True, method, method + (f" from {source}" if source else ""))
    return AuthStatus(False, method, "Claude Code is not logged in and has no API key: "
                                     + how_to_fix(cli))


def is_auth_failure(text: str, api_error_status: int | None = None) -> bool:
    return api_error_status == 401 or bool(AUTH_FAILURE.search(text or ""))


def effective_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment the claude executor gives the CLI: the agent's own, plus its
    additions (the offline model server's URL and key)."""
    return {**os.environ, **extra}
