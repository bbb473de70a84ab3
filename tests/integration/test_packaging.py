"""ccaa installed from its wheel runs from any directory: `ccaa up`, work, `ccaa deploy`,
`ccaa down`, with no source checkout in sight; `ccaa up --foreground` (a container's entry
point, a systemd unit's ExecStart) runs the stack until SIGTERM stops all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, _alive
from tests.integration.test_stack_e2e import CONFIG


def _tree(pid: int) -> list[int]:
    try:
        top = psutil.Process(pid)
        return [pid] + [c.pid for c in top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(pids: list[int]) -> list[int]:
    """Kill what is still alive; the pids that were."""
    alive = [p for p in pids if _alive(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment with ccaa installed from a freshly built wheel (its
    dependencies come from the system's site-packages)."""
    where = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(where / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((where / "dist").glob("ccaa-*.whl"))
    env_dir = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)],
                   check=True, timeout=120)
    installed = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr
    return env_dir


def _env() -> dict[str, str]:
    """No PYTHONPATH, and the working directory is not the checkout: only the wheel."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("CCAA_CONFIG", None)
    return env


@pytest.mark.timeout(300)
def test_the_wheel_runs_the_stack_from_any_directory(venv, tmp_path):
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import services, deploy; "
                            "print(services.__file__); print(deploy.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=_env())
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    assert where.stdout.split() == [str(site / "services" / "__init__.py"),
                                    str(site / "deploy" / "__init__.py")], where.stderr

    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()

    def ccaa(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "ccaa"), *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                              env=_env())

    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    tree: list[int] = []
    try:
        up = ccaa("up")
        assert up.returncode == 0, up.stdout + up.stderr
        tree = _tree(int(pidfile.read_text()))
        assert len(tree) == 1 + 6 + 2
        # every service and agent runs on the venv's interpreter, in its site-packages
        for pid in tree[1:]:
            proc = psutil.Process(pid)
            assert proc.cmdline()[0] == str(python), proc.cmdline()
        services = [psutil.Process(p) for p in tree[1:]
                    if "services.hub" in psutil.Process(p).cmdline()]
        assert services and services[0].cwd() == str(site)
        # the configuration supervisord ran came from the installed code
        assert (tmp_path / "data" / "run" / "supervisord.conf").is_file()

        run = ccaa("submit", "RUN", "printf wheel > out.txt", "--repo", str(repo), "--wait",
                   "--wait-timeout", "60")
        assert run.returncode == 0, run.stdout + run.stderr
        assert (repo / "out.txt").read_text() == "wheel"
    finally:
        down = ccaa("down")
        leftover = _kill(tree)
    assert down.returncode == 0 and "ccaa is down" in down.stdout, down.stderr
    assert leftover == []

    # the deployment files ship with the wheel
    out = tmp_path / "deploy"
    exported = subprocess.run([str(venv / "bin" / "ccaa"), "deploy", str(out)],
                              capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert exported.returncode == 0, exported.stderr
    for name in ("Dockerfile", "compose.yaml", "compose.node.yaml", "systemd/ccaa.service",
                 "systemd/ccaa-node.service", "prometheus.yml",
                 "grafana/dashboards/ccaa-overview.json", "supervisord.conf",
                 "node.supervisord.conf"):
        assert (out / name).is_file(), name
    assert (out / "supervisord.conf").read_text() == (ROOT / "supervisord.conf").read_text()
    # a second export finds everything up to date; an edited file is kept, not clobbered
    (out / "prometheus.yml").write_text("# mine\n")
    again = subprocess.run([str(venv / "bin" / "ccaa"), "deploy", str(out)],
                           capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert again.returncode == 1 and "prometheus.yml" in again.stderr
    assert (out / "prometheus.yml").read_text() == "# mine\n"


@pytest.mark.timeout(180)
def test_up_in_the_foreground_runs_until_sigterm_stops_everything(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "services.cli.main"]
    fg = subprocess.Popen([*cli, "up", "--foreground", "--config", str(config)], cwd=tmp_path,
                          env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:  # the process became supervisord: the same pid runs the stack
            status = subprocess.run([*cli, "status", "--config", str(config)], env=env,
                                    capture_output=True, text=True, timeout=30)
            agents = [r for r in status.stdout.splitlines() if " agent " in r]
            if status.returncode == 0 and len(agents) == 2:
                break
            assert fg.poll() is None, fg.stderr.read()
            assert time.monotonic() < deadline, status.stdout + status.stderr
            time.sleep(0.2)  # wait-ok: polling the CLI under a deadline
        assert "supervisor.supervisord" in " ".join(psutil.Process(fg.pid).cmdline())
        tree = _tree(fg.pid)
        assert len(tree) == 1 + 6 + 2
        # a second foreground start on the same run directory is refused, clearly
        again = subprocess.run([*cli, "up", "--foreground", "--config", str(config)],
                               env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode != 0 and "already runs" in again.stderr, again.stderr

        fg.send_signal(signal.SIGTERM)
        assert fg.wait(60) == 0
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in tree):
            assert time.monotonic() < deadline, [p for p in tree if _alive(p)]
            time.sleep(0.05)  # wait-ok: polling the process table under a deadline
    finally:
        if fg.poll() is None:
            os.killpg(fg.pid, signal.SIGKILL)
            fg.wait(10)
        leftover = _kill(tree)
    assert leftover == []
