"""`ccaa up` / `ccaa down`: the six services under supervisord on this host."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from libs.client import BusClient
from services.cli import orphans, supervisor_conf
from libs.config import CONFIG_ENV, SystemConfig, ensure_bus_token
from libs.peer import RequestFailed, RequestTimeout
from protocols.peer import CONTROLLER, controller_name
from protocols.peer import PeerKind, RegistryList, RegistryListReply

#: supervisor from ccaa's own interpreter: a venv need not be on PATH
SUPERVISORD = (sys.executable, "-m", "supervisor.supervisord")
SUPERVISORCTL = (sys.executable, "-m", "supervisor.supervisorctl")

SERVICES = ("hub", "commands", "orchestrator", "distributor", "reporter", "controller")
BUS_SERVICES = SERVICES[1:]  # the hub is the bus itself


def project_root() -> Path:
    """Where the services' packages are: a source checkout, or site-packages for a wheel."""
    return Path(__file__).resolve().parents[2]


def supervisord_conf(config: SystemConfig, node: bool = False) -> Path:
    """The stack's supervisord configuration (or a node's), written into the run directory
    from the installed code: no source checkout is needed."""
    return supervisor_conf.write(run_dir(config), node=node)


def run_dir(config: SystemConfig) -> Path:
    return config.data_path() / "run"


def stack_env(config: SystemConfig, config_file: str | None, overrides: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env["CCAA_ROOT"] = str(project_root())
    env["CCAA_PYTHON"] = sys.executable
    env["CCAA_RUN_DIR"] = str(run_dir(config))
    # --config, else $CCAA_CONFIG: the same file the CLI itself read, as an absolute path
    # (supervisord runs the services in another directory)
    config_file = config_file or os.environ.get(CONFIG_ENV) or None
    env["CCAA_CONFIG"] = str(Path(config_file).expanduser().resolve()) if config_file else ""
    env["CCAA_DATA_DIR"] = str(config.data_path())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()),
                                                      env.get("PYTHONPATH", "")]))
    return env


def supervisord_pid(config: SystemConfig) -> int | None:
    """The running supervisord's pid: from its pid file, else by asking it on its socket."""
    pidfile = run_dir(config) / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        if not (run_dir(config) / "supervisor.sock").exists():
            return None
        out = _supervisorctl(config, "pid").stdout.strip()
        if not out.isdigit():
            return None
        pid = int(out)
    return pid if _alive(pid) and _is_supervisord(pid) else None


def _is_supervisord(pid: int) -> bool:
    """A pid file outlives its process, and pids are reused."""
    import psutil

    try:
        return any("supervisord" in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _forget_supervisord(config: SystemConfig) -> None:
    for name in ("supervisord.pid", "supervisor.sock"):
        try:
            (run_dir(config) / name).unlink()
        except FileNotFoundError:
            pass


def stop_orphans(config: SystemConfig, beside: bool = False) -> list[str]:
    """With supervisord dead, stop what it had started (found by run directory), with
    ``beside`` also what was started beside it (orphans.BESIDE_ENV); returns what was
    stopped."""
    left = orphans.find(str(run_dir(config)), beside)
    stopped = orphans.stop(left) if left else []
    _forget_supervisord(config)
    return stopped


def _supervisorctl(config: SystemConfig, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CCAA_RUN_DIR=str(run_dir(config)))
    return subprocess.run([*SUPERVISORCTL, "-c", str(supervisord_conf(config)), *args],
                          env=env, capture_output=True, text=True, timeout=30)


async def registry(config: SystemConfig, timeout: float = 3.0) -> RegistryListReply:
    async with BusClient(config.communication, connect_timeout=timeout) as bus:
        reply = await bus.request("hub", RegistryList(), timeout=timeout)
    assert isinstance(reply.body, RegistryListReply)
    return reply.body


def expected_agents(config: SystemConfig) -> int:
    wanted = sum(r.count for r in config.agent_hierarchy.values())
    return min(wanted, config.resources.max_agents_total)


async def wait_ready(config: SystemConfig, timeout: float, pid: int,
                     progress: Callable[[str], None] | None = None,
                     services: list[str] | None = None, host: str = "",
                     what: str = "ccaa up", exited_is_final: bool = False) -> RegistryListReply:
    """Wait until ``services`` (default: the stack's, with this host's controller) and the
    configured agents (of ``host`` if given) have registered, reporting what is still
    missing as it changes; fail early if supervisord or a program dies."""
    deadline = time.monotonic() + timeout
    want_agents = expected_agents(config)
    # this host's controller is named after it (other hosts' controllers do not count)
    want = services or [controller_name(socket.gethostname()) if s == CONTROLLER else s
                        for s in BUS_SERVICES]
    total = len(want) + (0 if services else 1)  # the hub counts as a service of the stack
    last: RegistryListReply | None = None
    said = ""
    bus: BusClient | None = None
    try:
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise SystemExit(f"{what}: supervisord exited; see "
                                 + str(run_dir(config) / "supervisord.log"))
            problems = _starting_problems(config, what, exited_is_final)
            try:
                if bus is None:
                    bus = await BusClient(config.communication, connect_timeout=2.0).__aenter__()
                reply = await bus.request("hub", RegistryList(), timeout=2.0)
                assert isinstance(reply.body, RegistryListReply)
                last = reply.body
            except (RequestTimeout, RequestFailed, ConnectionError):
                bus = None
                status = "waiting for the hub"
            else:
                names = {p.name for p in last.peers if p.kind == PeerKind.SERVICE}
                agents = [p for p in last.peers if p.kind == PeerKind.AGENT
                          and (not host or p.host == host)]
                if set(want) <= names and len(agents) >= want_agents:
                    return last
                have = len(names & set(want)) + total - len(want)
                status = f"services {have}/{total}, agents {len(agents)}/{want_agents}"
            if problems:
                status = "; ".join([status, *problems])
            if progress is not None and status != said:
                progress(status)
                said = status
            await asyncio.sleep(0.2)
    finally:
        if bus is not None:
            await bus.close()
    have = sorted(p.name for p in last.peers) if last else []
    why = "".join(f"\n  {p}" for p in _starting_problems(config, what, exited_is_final))
    raise SystemExit(f"{what}: not every service registered within {timeout:g}s "
                     f"(registered: {', '.join(have) or 'none'}); logs in "
                     f"{run_dir(config)/'logs'}{why}")


def program_states(config: SystemConfig) -> dict[str, str]:
    """supervisorctl status -> {program: STATE}."""
    proc = _supervisorctl(config, "status")
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1]
    return states


def _last_line(config: SystemConfig, program: str) -> str:
    log = run_dir(config) / "logs" / f"{program}.log"
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    if not lines:
        return "(no log)"
    try:  # the services log JSON lines; a bind failure carries a readable message
        entry = json.loads(lines[-1])
        return str(entry.get("message") or entry.get("event") or lines[-1])
    except (ValueError, AttributeError):
        return lines[-1]


def _starting_problems(config: SystemConfig, what: str = "ccaa up",
                       exited_is_final: bool = False) -> list[str]:
    """Programs supervisord is restarting (BACKOFF: it keeps retrying them), with the last
    thing each logged; a FATAL program (it gave up), or with ``exited_is_final`` one that
    exited (a node's controller that was refused), ends the wait at once."""
    problems = []
    for program, state in program_states(config).items():
        if state == "EXITED" and exited_is_final:
            raise SystemExit(f"{what}: {program} exited: {_last_line(config, program)}")
        if state == "FATAL":
            log = run_dir(config) / "logs" / f"{program}.log"
            tail = log.read_text()[-1500:] if log.exists() else "(no log)"
            raise SystemExit(f"{what}: {program} is {state}; last lines of {log}:\n{tail}")
        if state == "BACKOFF":
            problems.append(f"{program} is restarting: {_last_line(config, program)}")
    return problems


def up(config: SystemConfig, config_file: str | None, env_overrides: dict[str, str],
       timeout: float, progress: Callable[[str], None] | None = None) -> RegistryListReply:
    pid = supervisord_pid(config)
    if pid is None:
        _clean_up_after_a_dead_supervisord(config, progress)
        try:
            other = asyncio.run(registry(config, timeout=1.0))
        except (RequestTimeout, RequestFailed, ConnectionError):
            other = None
        if other is not None:
            raise SystemExit(f"ccaa up: a hub ({other.hub_id}) already answers at "
                             f"{config.communication.router()}, not run from "
                             f"{run_dir(config)}; stop it first or use other endpoints")
        if not config.communication.token:  # other local users cannot join the bus
            config.communication.token = ensure_bus_token(config)
        pid = start_supervisord(config, stack_env(config, config_file, env_overrides),
                                supervisord_conf(config), "ccaa up")
    return asyncio.run(wait_ready(config, timeout, pid, progress))


def _clean_up_after_a_dead_supervisord(config: SystemConfig,
                                       progress: Callable[[str], None] | None) -> None:
    stopped = stop_orphans(config)
    if stopped and progress is not None:
        progress(f"supervisord had died; stopped {len(stopped)} process(es) it left "
                 f"running: {', '.join(stopped)}")


def start_supervisord(config: SystemConfig, env: dict[str, str], conf: Path, what: str) -> int:
    """Start supervisord on ``conf``; its pid once it runs."""
    rdir = run_dir(config)
    (rdir / "logs").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*SUPERVISORD, "-c", str(conf)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what}: supervisord failed: {proc.stderr.strip() or proc.stdout}")
    deadline = time.monotonic() + 10
    while (pid := supervisord_pid(config)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: supervisord did not start; see {rdir}/supervisord.log")
        time.sleep(0.05)  # wait-ok: polling for the pid file under a deadline
    return pid


def foreground(config: SystemConfig, config_file: str | None, env_overrides: dict[str, str],
               node_host: str | None = None) -> int:
    """Become supervisord, in the foreground, running the stack (or this host's node): for a
    container's entry point or a systemd unit. Returns only if supervisord cannot run."""
    what = "ccaa node" if node_host else "ccaa up"
    pid = supervisord_pid(config)
    if pid is not None:
        raise SystemExit(f"{what}: supervisord (pid {pid}) already runs from "
                         f"{run_dir(config)}; stop it first (ccaa down)")
    _clean_up_after_a_dead_supervisord(config, lambda line: print(line, file=sys.stderr))
    env = stack_env(config, config_file, env_overrides)
    if node_host:
        env["CCAA_NODE_HOST"] = node_host
        env["CCAA_COMMUNICATION__ROUTER_ENDPOINT"] = config.communication.router()
    elif not config.communication.token:
        ensure_bus_token(config)
    conf = supervisord_conf(config, node=node_host is not None)
    (run_dir(config) / "logs").mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [*SUPERVISORD, "-n", "-c", str(conf)], env)
    return 1  # not reached: execve returns only by raising


def node(config: SystemConfig, config_file: str | None, env_overrides: dict[str, str],
         host: str, timeout: float,
         progress: Callable[[str], None] | None = None) -> RegistryListReply:
    """Start this host's node (its controller under supervisord, supervisor_conf.node_conf)
    and wait until the controller and its agents registered with the hub."""
    pid = supervisord_pid(config)
    if pid is None:
        _clean_up_after_a_dead_supervisord(config, progress)
        env = stack_env(config, config_file, env_overrides)
        env["CCAA_NODE_HOST"] = host
        env["CCAA_COMMUNICATION__ROUTER_ENDPOINT"] = config.communication.router()
        pid = start_supervisord(config, env, supervisord_conf(config, node=True), "ccaa node")
    return asyncio.run(wait_ready(config, timeout, pid, progress,
                                  services=[controller_name(host)], host=host,
                                  what="ccaa node", exited_is_final=True))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


#: what `down` says when supervisord's tree was all there was
DOWN_PLAIN = "stopped supervisord and everything it ran"


def down(config: SystemConfig, timeout: float = 60.0) -> str:
    """Stop supervisord and with it every service (and the controller's agents); with
    supervisord dead, stop what it left running. Says what it did ("" if nothing ran)."""
    import psutil

    pid = supervisord_pid(config)
    if pid is None:
        stopped = stop_orphans(config, beside=True)
        if not stopped:
            return ""
        return (f"supervisord was not running; stopped {len(stopped)} process(es) left from "
                f"it: {', '.join(stopped)}")
    try:
        tree = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = [pid]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in tree):
        if time.monotonic() > deadline:
            for p in tree:
                if _alive(p):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            break
        time.sleep(0.05)
    # what escaped its tree (a task's daemon) carries the run directory too, and what was
    # started beside it for this stack (the demo's model server) a marker of its own
    stopped = stop_orphans(config, beside=True)
    if stopped:
        return (f"{DOWN_PLAIN}, and {len(stopped)} more "
                f"process(es) of this stack: {', '.join(stopped)}")
    return DOWN_PLAIN
