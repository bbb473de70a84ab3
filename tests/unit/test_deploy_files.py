"""The deployment files are right: the checked-in supervisord configurations are what ccaa
generates, every ccaa command a container or unit runs is one the CLI accepts, the compose
files mount files that exist, and systemd accepts the units."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import yaml

import deploy
from services.cli import supervisor_conf
from services.cli.main import build_parser
from tests.conftest import ROOT, tools_or_skip

DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
COMPOSE = sorted(DEPLOY.glob("compose*.yaml"))


def test_the_checked_in_supervisord_configs_are_the_generated_ones():
    for path, text in supervisor_conf.checkout_copies(ROOT).items():
        assert path.read_text() == text, (
            f"{path} differs: run python -m services.cli.supervisor_conf --write")


def test_the_checked_in_dashboard_is_the_generated_one():
    from deploy import dashboard

    assert dashboard.OUT.read_text() == dashboard.render(), (
        "run python -m deploy.dashboard --write")
    titles = [p.title for p in dashboard.panels()]
    assert len(titles) == len(set(titles)), "panel titles are unique"


def test_every_service_log_is_rotated():
    for text in (supervisor_conf.stack_conf(), supervisor_conf.node_conf()):
        programs = text.count("[program:")
        assert text.count("stdout_logfile_maxbytes=") == programs
        assert text.count("stderr_logfile_maxbytes=") == programs


def test_every_deployment_file_is_listed_for_export():
    names = deploy.files()
    for name in ("Dockerfile", ".dockerignore", "compose.yaml", "compose.node.yaml",
                 "ccaa.toml", "ccaa-node.env", "prometheus.yml", "supervisord.conf",
                 "node.supervisord.conf", "systemd/ccaa.service", "systemd/ccaa-node.service",
                 "grafana/dashboards/ccaa-overview.json"):
        assert name in names, name
    assert not [n for n in names if n.endswith(".py")]


def _accepted(argv: list[str]) -> None:
    """The CLI parses ``argv`` (after `ccaa`) without error."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`ccaa {' '.join(argv)}` is refused by the CLI (exit {exc.code})")


def test_what_containers_and_units_run_is_a_valid_ccaa_command():
    text = (DEPLOY / "Dockerfile").read_text()
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    _accepted(yaml.safe_load(cmd.removeprefix("CMD ")))
    for path in COMPOSE:
        for name, svc in yaml.safe_load(path.read_text())["services"].items():
            if svc.get("image", "").startswith("ccaa"):
                argv = [a.replace("${CCAA_HUB:?set CCAA_HUB=tcp://HUB:5555}", "tcp://h:5555")
                        for a in svc["command"]]
                _accepted(argv)
    for unit in UNITS:
        start = next(line for line in unit.read_text().splitlines()
                     if line.startswith("ExecStart="))
        argv = shlex.split(start.removeprefix("ExecStart="))[1:]
        _accepted([a.replace("${CCAA_HUB}", "tcp://h:5555") for a in argv])


def test_the_compose_files_mount_and_build_what_exists():
    for path in COMPOSE:
        spec = yaml.safe_load(path.read_text())
        for name, svc in spec["services"].items():
            build = svc.get("build")
            if build:
                context = (DEPLOY / build["context"]).resolve()
                assert (context / build["dockerfile"]).is_file(), (path.name, name)
            for volume in svc.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("./"):
                    assert (DEPLOY / source).exists(), (path.name, name, source)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_accepts_the_unit(unit, tmp_path):
    tools_or_skip("systemd-analyze")
    ccaa = subprocess.run(["which", "ccaa"], capture_output=True, text=True).stdout.strip()
    assert ccaa, "ccaa is installed"
    import getpass

    text = unit.read_text().replace("/opt/ccaa/bin/ccaa", ccaa).replace(
        "User=ccaa", f"User={getpass.getuser()}")
    copy = tmp_path / unit.name
    copy.write_text(text)
    verified = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), \
        verified.stdout + verified.stderr
    # the check can fail: a misspelt setting is reported
    copy.write_text(text.replace("Type=simple", "Type=simpel"))
    broken = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60)
    assert "simpel" in broken.stdout + broken.stderr
