"""Which event loop a service runs on: uvloop for the services that only move messages,
asyncio's own for those that spawn and watch processes, and CCAA_EVENT_LOOP to choose."""

from __future__ import annotations

import asyncio

import uvloop

from libs.runner import EVENT_LOOP_ENV, common_parser, run_main


def loop_of(monkeypatch, tmp_path, spawns_processes: bool = False,
            env: str | None = None) -> tuple[int, list[type]]:
    if env is None:
        monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    else:
        monkeypatch.setenv(EVENT_LOOP_ENV, env)
    monkeypatch.delenv("CCAA_CONFIG", raising=False)
    seen: list[type] = []

    async def setup(args, config) -> int:
        seen.append(type(asyncio.get_running_loop()))
        return 7

    code = run_main(setup, common_parser("ccaa-test", "test"),
                    ["--set", f'data_dir="{tmp_path}"'], spawns_processes=spawns_processes)
    return code, seen


def test_a_service_that_moves_messages_runs_on_uvloop(monkeypatch, tmp_path):
    code, seen = loop_of(monkeypatch, tmp_path)
    assert code == 7
    assert seen == [uvloop.Loop]


def test_a_service_that_spawns_processes_runs_on_asyncios_own_loop(monkeypatch, tmp_path):
    code, seen = loop_of(monkeypatch, tmp_path, spawns_processes=True)
    assert code == 7
    assert seen and not issubclass(seen[0], uvloop.Loop)


def test_the_environment_can_ask_for_asyncios_loop_everywhere(monkeypatch, tmp_path):
    code, seen = loop_of(monkeypatch, tmp_path, env="asyncio")
    assert code == 7
    assert seen and not issubclass(seen[0], uvloop.Loop)


def test_an_unknown_loop_is_a_clear_error_and_exit_2(monkeypatch, tmp_path, capsys):
    code, seen = loop_of(monkeypatch, tmp_path, env="tornado")
    assert code == 2
    assert seen == []
    assert "CCAA_EVENT_LOOP must be uvloop or asyncio, not 'tornado'" in capsys.readouterr().err
