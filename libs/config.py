"""Configuration: pydantic models mirroring the seed's SystemConfig plus agent_hierarchy.

Each setting is declared once here, with its type, default and help text. Sources, lowest
to highest precedence: defaults < one TOML file < ``CCAA_*`` environment variables <
CLI flags (``--set section.key=value`` and the service's own flags).

Environment variables name a setting by its path with ``__`` between levels, e.g.
``CCAA_COMMUNICATION__HUB_PORT=6000`` or ``CCAA_AGENT_HIERARCHY__WORKER__COUNT=3``; the
value is parsed as TOML when it can be (numbers, booleans, arrays) and taken as a string
otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CommunicationConfig(_Section):
    hub_host: str = Field("127.0.0.1", description="address peers connect to (and the hub binds)")
    hub_port: int = Field(5555, ge=0, le=65535, description="hub ROUTER port (request/reply)")
    pub_port: int = Field(5556, ge=0, le=65535, description="hub XSUB port (publishers)")
    sub_port: int = Field(5557, ge=0, le=65535, description="hub XPUB port (subscribers)")
    router_endpoint: str = Field("", description="full ROUTER endpoint, overrides host/port")
    pub_endpoint: str = Field("", description="full XSUB endpoint, overrides host/port")
    sub_endpoint: str = Field("", description="full XPUB endpoint, overrides host/port")
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between heartbeats")
    liveness: int = Field(3, ge=1, description="heartbeats missed before a peer is lost")
    message_timeout: float = Field(10.0, gt=0, description="seconds a request waits for reply")
    curve: bool = Field(False, description="encrypt and authenticate every bus socket with "
                        "CurveZMQ (keys from `ccaa keys init`); needed off loopback")
    keys_dir: str = Field("~/.ccaa/keys", description="CurveZMQ keys: hub.key, the client "
                          "keypairs, authorized/ (the hub's allow-list)")
    client_key: str = Field("client", description="this peer's keypair in keys_dir (a "
                            "service uses the key named after it when keys_dir has one)")
    agent_key: str = Field("agents", description="the keypair agents use when keys_dir has "
                           "it (else client_key); `ccaa keys add NAME --role R` makes one")
    node_key: str = Field("controller", description="the keypair this host's controller "
                          "uses when keys_dir has it (`ccaa keys add NAME --service "
                          "controller@HOST` binds one to its host)")
    token: str = Field("", description="secret every peer must present to register; the hub "
                       "requires it when set. Default: DATA_DIR/bus.token if it exists (ccaa "
                       "up makes one, mode 0600, so other local users cannot join); give "
                       "remote hosts the same value")

    def router(self) -> str:
        return self.router_endpoint or f"tcp://{self.hub_host}:{self.hub_port}"

    def pub(self) -> str:
        return self.pub_endpoint or f"tcp://{self.hub_host}:{self.pub_port}"

    def sub(self) -> str:
        return self.sub_endpoint or f"tcp://{self.hub_host}:{self.sub_port}"


class OrchestratorConfig(_Section):
    max_parallel_tasks: int = Field(4, ge=1, description="tasks running at once, all sessions")
    task_timeout: float = Field(600.0, gt=0, description="seconds one attempt may run")
    retry_attempts: int = Field(2, ge=0, description="retries after a failed attempt")
    retry_backoff: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    max_interruptions: int = Field(
        5, ge=0, description="times a task is run again because its agent went away (stopped, "
        "restarted, lost) before it fails; these do not use up retry_attempts")
    max_replans: int = Field(1, ge=0, description="times the architect may re-plan one "
                             "subtask's line (re-planning a replacement counts again)")
    max_replans_per_session: int = Field(3, ge=0, description="re-plans in one session; past "
                                         "either limit the subtask ends failed and the "
                                         "session ends partial, naming it")
    unassignable_timeout: float = Field(
        300.0, gt=0, description="seconds a task may wait while no registered agent could "
        "take it (no agent of its role, or none with its capabilities); then "
        "on_unassignable applies")
    on_unassignable: Literal["fail", "next_tier"] = Field(
        "fail", description="past unassignable_timeout: fail the task with the reason, or "
        "run it one tier up the session's escalation ladder (worker -> manager -> architect)")
    result_resend_interval: float = Field(2.0, gt=0, description="agent resends unacked results")
    reconcile_interval: float = Field(2.0, gt=0, description="seconds between agent checks")
    resume_on_retry: bool = Field(True, description="a retried Claude Code task resumes the "
                                  "previous attempt's session, keeping its context")
    isolate_worktrees: bool = Field(
        True, description="tasks on a git repository run in their own worktree and branch "
        "(ccaa/<session>/<task>) made from the session's base commit")
    worktree_setup: str = Field("", description="shell command run in each new worktree "
                                "first (copy env files, install dependencies)")
    templates_dir: str = Field("", description="extra workflow templates (<name>.yaml); "
                               "a template for a command type replaces the built-in one")
    retention_days: float = Field(30.0, ge=0, description="finished sessions older than this "
                                  "are pruned from the database (0: keep them all)")
    audit_retention_days: float = Field(365.0, ge=0, description="audit records older than "
                                        "this are pruned (0: keep them all)")
    backup_interval_hours: float = Field(24.0, ge=0, description="hours between automatic "
                                         "backups of the state database (0: none)")
    backup_keep: int = Field(7, ge=1, description="automatic backups kept (oldest go first)")
    backup_dir: str = Field("", description="where automatic backups go (default "
                            "DATA_DIR/backups)")
    maintenance_interval: float = Field(600.0, gt=0, description="seconds between checks for "
                                        "pruning and backups")


class DistributionConfig(_Section):
    strategy: Literal["capability_based", "load_balanced", "performance_based", "round_robin"] = (
        "load_balanced"
    )
    load_balancing_algorithm: Literal["least_loaded"] = "least_loaded"


class GateConfig(_Section):
    """A quality gate: a real command run in the branch under test, and its pass criterion.

    ``exit_code``: passes when the command exits 0. ``threshold``: ``pattern`` (a regular
    expression with one group) extracts a number from the output, which must be at least
    ``min`` and/or at most ``max``. ``new_findings``: run on the branch and on the base
    commit; passes when the branch adds no finding (legacy ones do not block).
    ``no_drop``: the ``pattern`` figure on the branch is at least the base commit's.
    ``test_first``: the tests the branch adds or changes fail on the base commit and pass
    on the branch (``{tests}`` in the command: those files). ``improvement``: a benchmark
    on the base and the branch, interleaved, ``rounds`` each; passes on a gain of at least
    ``min_improvement`` beyond the runs' noise (figure: ``pattern``'s, else wall time).
    ``no_removals``: every output line of the base (e.g. a public API) is still there. ``auto``
    (the default) takes the command the repository's toolchain calls for; an empty
    command means the gate is not configured for this project: it is skipped and
    reported as such."""

    command: str = ""
    kind: Literal["exit_code", "threshold", "new_findings", "no_drop", "test_first",
                  "improvement", "no_removals"] = "exit_code"
    pattern: str = ""
    min: float | None = None
    max: float | None = None
    timeout: float = Field(900.0, gt=0)
    rounds: int = Field(5, ge=1, le=50, description="improvement: runs on each side")
    min_improvement: float = Field(0.05, ge=0, description="improvement: the least "
                                   "relative gain that passes (0.05 = 5%)")
    better: Literal["lower", "higher"] = "lower"
    requires: list[str] = Field(default_factory=list, description="executables (or "
                                "python:<module>) the command needs; missing ones make the "
                                "gate 'not available' instead of failing the work")


#: a gate command that the repository's toolchain decides (services/orchestrator/toolchain)
AUTO = "auto"


def _default_gates() -> dict[str, GateConfig]:
    """Every gate's command comes from the repository's toolchain unless set here or in
    the repository's .ccaa.toml."""
    gates = {name: GateConfig(command=AUTO)
             for name in ("tests", "coverage", "lint", "security", "test_first", "api")}
    gates["benchmark"] = GateConfig(command=AUTO, kind="improvement")
    return gates


class ResourceLimits(_Section):
    max_agents_total: int = Field(16, ge=1, description="agents one controller may run")
    max_memory_mb: int = Field(0, ge=0, description="per-agent resident memory limit, its "
                               "Claude Code runs included; the controller stops an agent "
                               "over it (it restarts; its task is re-queued). 0 = unlimited")
    agent_memory_mb: int = Field(400, ge=1, description="memory one agent needs while it "
                                 "runs a task, its Claude Code run included (~290 MB for a "
                                 "small task: benchmarks/agent_memory.py); auto-scaling "
                                 "starts an agent only when the host has this much available "
                                 "beyond reserve_memory_mb (or the most one of its agents "
                                 "has used, if that is more)")
    reserve_memory_mb: int = Field(512, ge=0, description="memory auto-scaling leaves free "
                                   "on the host for everything else")


class ReportingConfig(_Section):
    real_time_updates: bool = Field(True, description="the dashboard's pages change on each "
                                    "bus event (server-sent events); false: they refresh "
                                    "every dashboard_refresh_interval")
    report_retention_hours: float = Field(24.0, gt=0)
    dashboard_refresh_interval: float = Field(
        2.0, gt=0, description="seconds between the dashboard's refreshes without "
        "real_time_updates (with it, a safety refresh every 10 s or this, if longer)")
    http_port: int = Field(8780, ge=0, le=65535,
                           description="reporter HTTP port: the web dashboard, /api/summary "
                           "and /metrics")
    http_token: str = Field("", description="token every request to the reporter must carry "
                            "(Authorization: Bearer, or ?token=); when empty and metrics.host "
                            "is not a loopback address, one is made in DATA_DIR/reporter.token")


#: what a notification can be about: how a session ended, or that it needs someone
NotifyEvent = Literal["succeeded", "failed", "partial", "cancelled", "needs_attention"]


class WebhookConfig(_Section):
    url: str = Field(pattern=r"^https?://", description="where to POST each notification")
    format: Literal["json", "slack"] = Field(
        "json", description="json: the notification as a JSON object; slack: a Slack (or "
        "Mattermost, Rocket.Chat) incoming-webhook body with a text line")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="extra HTTP headers (e.g. Authorization)")
    events: list[NotifyEvent] = Field(default_factory=list,
                                      description="only these (default: notifications.events)")


class NotificationsConfig(_Section):
    """Who is told when a session ends or needs someone (sent by the reporter): webhooks
    and a command, each retried with backoff; every delivery is logged in
    DATA_DIR/notifications.jsonl."""

    events: list[NotifyEvent] = Field(
        default_factory=lambda: ["succeeded", "failed", "partial", "needs_attention"],
        description="what to tell about: succeeded, failed, partial, cancelled, "
        "needs_attention (stalled, budget reached, work no agent can take)")
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    command: list[str] = Field(
        default_factory=list, description="a command run for each notification (argv; "
        "{event}, {session} and {summary} are substituted), the notification as JSON on "
        "its stdin; e.g. [\"notify-send\", \"ccaa\", \"{summary}\"]")
    retries: int = Field(3, ge=0, le=20, description="retries after a failed delivery")
    retry_backoff: float = Field(2.0, ge=0, description="seconds before the first retry; "
                                 "doubles each retry")
    timeout: float = Field(10.0, gt=0, description="seconds one delivery may take")
    stalled_after: float = Field(1800.0, gt=0, description="a running session in which "
                                 "nothing happened this long needs attention")
    dashboard_url: str = Field("", description="linked from messages (default: none)")


class AutoScalingConfig(_Section):
    """Each host's controller grows a role's pool while work for that role waits and all its
    agents are busy, and shrinks it while agents sit idle, within min/max per role (a role
    missing from min_agents_per_type keeps its configured count as the minimum)."""

    enabled: bool = False
    min_agents_per_type: dict[str, int] = {}
    max_agents_per_type: dict[str, int] = {}
    interval: float = Field(2.0, gt=0, description="seconds between scaling decisions")
    cooldown: float = Field(15.0, ge=0, description="seconds after a change before the next")
    idle_before_scale_down: float = Field(60.0, ge=0, description="seconds a surplus agent "
                                          "stays idle before it is stopped")


class CodeTransferConfig(_Section):
    """How agents get a session's repository. The repository stays on the orchestrator's
    host; an agent whose host cannot see it gets the commits it needs over the bus (git
    bundles in chunks, into a per-host cache each later task updates incrementally) and
    sends its task's branch back as ``ccaa/<session>/<task>``."""

    mode: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: use the repository in place when this host has it (same "
        "path, the base commit present), else transfer; always: transfer even when the path "
        "is visible (one machine can test the many-host path); never: the path must be "
        "visible (a shared filesystem)")
    chunk_kb: int = Field(256, ge=4, le=1024, description="KiB per chunk")
    credit: int = Field(8, ge=1, le=64, description="chunks in flight per transfer (the "
                        "receiver asks for more as each arrives, so a large repository "
                        "never floods the hub or delays other traffic)")
    cache_dir: str = Field("", description="this host's repository caches (default "
                           "DATA_DIR/repos)")
    max_transfers: int = Field(16, ge=1, description="bundles the orchestrator keeps ready "
                               "at once (more wait for one to be released)")
    transfer_idle: float = Field(300.0, gt=0, description="seconds an unreleased transfer "
                                 "is kept after its last use")


class MetricsConfig(_Section):
    host: str = Field("127.0.0.1", description="address each service's /metrics binds")
    ports: dict[str, int] = Field(
        default_factory=lambda: {
            "hub": 9450,
            "commands": 9451,
            "orchestrator": 9452,
            "distributor": 9453,
            "controller": 9455,
        },
        description="per-service /metrics port (0 = ephemeral); agents use agent_ports",
    )
    advertise_host: str = Field("", description="the address other hosts (Prometheus, via "
                                "the reporter's /api/targets) reach this host's /metrics at; "
                                "default: metrics.host, or this host's name when metrics.host "
                                "is a wildcard like 0.0.0.0")
    agent_ports: str = Field("", pattern=r"^$|^\d{1,5}-\d{1,5}$",
                             description="ports agents bind /metrics in, as FIRST-LAST (one "
                             "free port each, e.g. 9500-9599 to open in a firewall); empty: "
                             "ephemeral")

    @field_validator("agent_ports")
    @classmethod
    def _ordered(cls, value: str) -> str:
        if value:
            first, last = (int(p) for p in value.split("-"))
            if not 0 < first <= last <= 65535:
                raise ValueError("needs FIRST-LAST with 0 < FIRST <= LAST <= 65535")
        return value

    def port_range(self) -> range | None:
        if not self.agent_ports:
            return None
        first, last = (int(p) for p in self.agent_ports.split("-"))
        return range(first, last + 1)

    def advertised(self, host: str) -> str:
        """The host part of this process's metrics URL, as other hosts reach it."""
        if self.advertise_host:
            return self.advertise_host
        if host in ("0.0.0.0", "::", "", "*"):
            import socket

            return socket.getfqdn()
        return host


class RoleConfig(_Section):
    """One tier of agent_hierarchy (architect, manager, worker, utility)."""

    count: int = Field(0, ge=0, description="agents of this role the controller starts")
    capacity: int = Field(1, ge=1, description="tasks one agent runs at once")
    capabilities: list[str] = []
    executor: Literal["command", "claude", "python"] = "command"
    command: list[str] = Field(
        default_factory=lambda: ["bash", "-c", "{prompt}"],
        description="command executor template; {prompt} and {cwd} are substituted",
    )
    callable: str = Field("", description="python executor: 'package.module:function', "
                          "called in the agent's process with the task's prompt")
    cli_path: str = Field("", description="claude executor: the CLI to run (default: "
                          "$CCAA_CLAUDE_PATH, then `claude` on PATH, then the SDK's own)")
    model: str = "sonnet"
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompts: list[str] = []
    max_turns: int | None = None
    max_budget_usd: float | None = None
    allowed_tools: list[str] = []
    disallowed_tools: list[str] = []
    permission_mode: str = "acceptEdits"
    env_passthrough: list[str] = Field(
        default_factory=list, description="command executor: the agent's environment "
        "variables its task and gate commands also get (names or patterns like 'NPM_*'); "
        "by default they get only PATH, HOME, locale and the like, never credentials")


def _default_hierarchy() -> dict[str, RoleConfig]:
    """Claude Code plans, reviews and implements; utility agents run gate commands."""
    return {
        "architect": RoleConfig(count=1, executor="claude", model="opus",
                                disallowed_tools=["Write", "Edit", "NotebookEdit"]),
        "manager": RoleConfig(count=1, executor="claude", model="opus",
                              allowed_tools=["Bash(git merge *)", "Bash(git add *)",
                                             "Bash(git commit *)", "Bash(git status *)",
                                             "Bash(python -m pytest *)"]),
        "worker": RoleConfig(count=2, executor="claude", model="sonnet",
                             allowed_tools=["Bash(python -m pytest *)", "Bash(pytest *)"]),
        "utility": RoleConfig(count=1, executor="command"),
    }


class SystemConfig(_Section):
    data_dir: str = Field("~/.ccaa", description="state database, logs and runtime files")
    communication: CommunicationConfig = CommunicationConfig()
    orchestrator: OrchestratorConfig = OrchestratorConfig()
    distribution: DistributionConfig = DistributionConfig()
    resources: ResourceLimits = ResourceLimits()
    reporting: ReportingConfig = ReportingConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    auto_scaling: AutoScalingConfig = AutoScalingConfig()
    metrics: MetricsConfig = MetricsConfig()
    code_transfer: CodeTransferConfig = CodeTransferConfig()
    agent_hierarchy: dict[str, RoleConfig] = Field(default_factory=_default_hierarchy)
    gates: dict[str, GateConfig] = Field(
        default_factory=_default_gates,
        description="quality gates by name; a repository's .ccaa.toml [gates] overrides")

    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    def role(self, name: str) -> RoleConfig:
        try:
            return self.agent_hierarchy[name]
        except KeyError:
            raise ConfigError(
                f"unknown role {name!r}; agent_hierarchy has {sorted(self.agent_hierarchy)}"
            ) from None


class ConfigError(Exception):
    """A config file, variable or flag that cannot be used; the message says which and why."""


ENV_PREFIX = "CCAA_"
CONFIG_ENV = "CCAA_CONFIG"


def _parse_scalar(text: str) -> Any:
    """Arrays, tables and quoted strings are parsed as TOML; anything else stays text for
    pydantic to convert to the setting's type ("6000" -> 6000 for an int setting, while a
    string setting keeps "true" or "4" as written)."""
    if text[:1] in ("[", "{", '"', "'"):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text
    return text


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if path and path[0] in SystemConfig.model_fields:  # other CCAA_* are not settings
            _set_path(tree, path, _parse_scalar(value))
    return tree


def flag_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["communication.hub_port=6000", ...]`` -> nested dict."""
    tree: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        _set_path(tree, [p.strip() for p in key.split(".")], _parse_scalar(value.strip()))
    return tree


def load_tree(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings as given (file < environment < overrides), before defaults and checks.
    ``path`` falls back to ``$CCAA_CONFIG``, then none; a ``.json`` file is read as JSON (a
    node's effective configuration), anything else as TOML."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    tree: dict[str, Any] = {}
    if path:
        file = Path(path).expanduser()
        try:
            text = file.read_text()
            tree = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            kind = "JSON" if file.suffix == ".json" else "TOML"
            raise ConfigError(f"config file {file} is not valid {kind}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {file} cannot be read: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {file} does not hold a table of settings")
    tree = _merge(tree, env_overrides(environ))
    if overrides:
        tree = _merge(tree, overrides)
    return tree


def build_config(tree: Mapping[str, Any]) -> SystemConfig:
    """Check a tree of settings and fill in the defaults."""
    tree = dict(tree)
    # roles and gates named in the file/env extend the defaults instead of replacing them
    for key, defaults_of in (("agent_hierarchy", _default_hierarchy), ("gates", _default_gates)):
        if key in tree:
            defaults = {k: v.model_dump() for k, v in defaults_of().items()}
            tree[key] = _merge(defaults, tree[key])
    try:
        config = SystemConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    if not config.communication.token:
        config.communication.token = read_bus_token(config)
    return config


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SystemConfig:
    """Build the effective config. ``path`` falls back to ``$CCAA_CONFIG``, then none."""
    return build_config(load_tree(path, environ, overrides))


BUS_TOKEN_FILE = "bus.token"


def read_bus_token(config: "SystemConfig") -> str:
    """The bus token kept in the data directory ("" if there is none)."""
    try:
        return (config.data_path() / BUS_TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read the bus token {config.data_path() / BUS_TOKEN_FILE}: "
                          f"{exc}") from None


def ensure_bus_token(config: "SystemConfig") -> str:
    """Make the data directory's bus token if there is none (mode 0600); return it."""
    path = config.data_path() / BUS_TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    return read_bus_token(config)

