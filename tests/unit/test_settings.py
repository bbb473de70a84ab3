"""`ccaa config show` prints the configuration in effect (file < environment < --set) as
TOML that reads back the same, with secrets hidden; README's settings reference is the
one generated from the models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

from libs.config import load_config
from services.cli import settings
from tests.conftest import ROOT


def test_readme_lists_every_setting_as_the_models_define_it():
    text = (ROOT / "README.md").read_text()
    start = text.index(settings.BEGIN) + len(settings.BEGIN) + 1
    assert text[start:text.index(settings.END)] == settings.reference(), (
        "run python -m services.cli.settings --write")
    paths = [row[0] for row in settings.rows()]
    for path in ("notifications.webhooks[].url", "agent_hierarchy.ROLE.executor",
                 "gates.NAME.command", "metrics.advertise_host", "communication.token"):
        assert path in paths


def test_the_toml_shown_reads_back_as_the_configuration():
    config = load_config(None, overrides={"notifications": {"webhooks": [
        {"url": "http://h/x", "format": "slack"}]}})
    shown = settings.redacted(config)
    back = tomllib.loads(settings.to_toml(shown))

    def unset_dropped(x):
        if isinstance(x, dict):
            return {k: unset_dropped(v) for k, v in x.items() if v is not None}
        return [unset_dropped(v) for v in x] if isinstance(x, list) else x

    assert back == unset_dropped(shown)


def test_config_show_applies_file_environment_and_flags_and_hides_secrets(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text('[orchestrator]\nmax_parallel_tasks = 7\nretry_attempts = 5\n'
                      '[communication]\ntoken = "sesame"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT), CCAA_ORCHESTRATOR__RETRY_ATTEMPTS="6")
    shown = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "config", "show", "--json", "--config",
         str(config), "--set", "orchestrator.task_timeout=99"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["orchestrator"]["max_parallel_tasks"] == 7  # the file
    assert data["orchestrator"]["retry_attempts"] == 6  # the environment over the file
    assert data["orchestrator"]["task_timeout"] == 99  # --set over both
    assert data["communication"]["token"] == "(set)"
    assert "sesame" not in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "services.cli.main", "config", "show",
                          "--set", "orchestrator.max_parallel_tasks=0"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "max_parallel_tasks" in bad.stderr
