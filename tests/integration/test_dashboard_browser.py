"""The dashboard in a real browser (Debian's chromium, driven by Playwright): a planned
session's page draws its DAG, follows the session's states live over server-sent events
without a reload, shows the attempts per agent and the review's verdicts, and the page
logs no console error; the overview lists the session and the agents by host and role."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.conftest import tools_or_skip
from tests.integration.test_bus_flow import session_state, wait_for
from tests.integration.test_workflow_scripted import make_repo, stack_args, start_stack

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def chromium() -> str:
    tools_or_skip("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI installs playwright (the test extra)")
        pytest.skip("playwright is not installed here (pip install -e '.[test]')")
    return shutil.which("chromium") or ""


@pytest.mark.timeout(150)
def test_session_page_draws_the_dag_and_follows_it_live(procs, bus, tmp_path):
    from playwright.async_api import async_playwright

    executable = chromium()
    repo = tmp_path / "repo"
    make_repo(repo)
    # each work step takes a while, so the page is open while the session runs
    start_stack(procs, bus, {"SCRIPTED_WORK_DELAY": "1.5"})
    reporter = procs.ready(procs.service("services.reporter", *stack_args(bus)))
    base = reporter["metrics"].removesuffix("/metrics")

    async def go():
        async with BusClient(bus.comm()) as client, async_playwright() as pw:
            accepted = await client.request("commands", CommandSubmit(
                text="Create alpha, beta and gamma files", repo=str(repo),
                type=CommandType.IMPLEMENT_FEATURE))
            sid = accepted.body.session_id
            browser = await pw.chromium.launch(executable_path=executable,
                                               args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page()
                problems: list[str] = []
                page.on("console", lambda m: problems.append(m.text)
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}")
                        if r.status >= 400 else None)
                loads: list[str] = []
                page.on("load", lambda p: loads.append(p.url))
                await page.goto(f"{base}/session/{sid}")
                # the plan task first; the work tasks appear once the plan is accepted
                await page.wait_for_selector("#dag-svg g.task", timeout=20_000)
                await page.wait_for_function(
                    "document.querySelectorAll('#dag-svg g.task').length >= 4",
                    timeout=60_000)
                # a work task is seen running, then every node reaches an end state, all
                # on the one page load (events, not reloads)
                await page.wait_for_selector("#dag-svg g.task[data-state=running]",
                                             timeout=60_000)
                await page.wait_for_function(
                    "document.getElementById('state').textContent === 'succeeded'",
                    timeout=90_000)
                states = dict(await page.eval_on_selector_all(
                    "#dag-svg g.task", "gs => gs.map(g => [g.id.slice(5), g.dataset.state])"))
                edges = await page.locator("#dag-svg path.edge").count()
                bars = await page.locator("#timeline-svg rect.bar").count()
                details = await page.inner_text("#tasks")
                live = await page.inner_text("#live")
                await page.screenshot(path=str(tmp_path / "session.png"), full_page=True)
                # the overview lists the session and the agents by host and role
                await page.goto(f"{base}/")
                await page.wait_for_selector(f"#sessions a[href*='{sid}']", timeout=15_000)
                agents = await page.inner_text("#agents")
                counts = await page.inner_text("#sessions_by_state")
                await page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            finally:
                await browser.close()
            status = await session_state(client, sid)
            return status, states, edges, bars, details, live, agents, counts, problems, loads

    status, states, edges, bars, details, live, agents, counts, problems, loads = \
        asyncio.run(go())
    assert status.session.state.value == "succeeded"
    assert problems == []
    assert len(loads) == 2  # the session page once, then the overview: nothing reloaded
    assert live == "live"
    # every task of the session is drawn, in the state it ended in
    assert states == {t.task_id: t.state.value for t in status.tasks}
    # c depends on a and b; the plan, reviews and gates hang off their parents
    assert edges >= 2
    attempts = sum(t.attempt for t in status.tasks if t.attempt)
    assert bars == attempts  # one bar per attempt, on its agent's row
    assert "review: approve" in details  # the manager's verdicts are shown
    assert "worker" in agents and "w-1" in agents and "w-2" in agents
    assert "succeeded" in counts


@pytest.mark.timeout(60)
def test_overview_counts_come_from_the_orchestrator_and_poll_without_events(procs, bus,
                                                                           tmp_path):
    """A reporter started after the work was done shows the orchestrator's counts; with
    real_time_updates off the page refreshes on its interval and still follows the work."""
    from playwright.async_api import async_playwright

    executable = chromium()
    args = bus.args()
    for m in ("services.commands", "services.orchestrator", "services.distributor"):
        procs.ready(procs.service(m, *args))
    procs.ready(procs.service("services.agent", *args, "--name", "agent-a", name="agent-a"))
    repo = tmp_path / "repo"
    repo.mkdir()

    async def run(client, *texts):
        sids = []
        for text in texts:
            accepted = await client.request("commands", CommandSubmit(
                text=text, repo=str(repo), type=CommandType.RUN))
            sids.append(accepted.body.session_id)

        async def ended():
            states = [(await session_state(client, s)).session.state.value for s in sids]
            return "running" not in states

        await wait_for(ended, 30, "the sessions to end")

    async def rows(page) -> dict[str, str]:
        text = await page.inner_text("#sessions_by_state")
        return dict(line.split("\t") for line in text.strip().splitlines())

    async def go():
        async with BusClient(bus.comm()) as client:
            await run(client, "true", "false")
            reporter = procs.ready(procs.service(  # it saw none of that work
                "services.reporter", *args, "--set", "reporting.real_time_updates=false",
                "--set", "reporting.dashboard_refresh_interval=0.5"))
            base = reporter["metrics"].removesuffix("/metrics")
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=executable,
                                                   args=CHROMIUM_FLAGS)
                try:
                    page = await browser.new_page()
                    await page.goto(f"{base}/")
                    await page.wait_for_function(
                        "document.getElementById('stamp').textContent.includes('orchestrator')",
                        timeout=20_000)
                    first = await rows(page)
                    live = await page.inner_text("#live")
                    await run(client, "true")
                    await page.wait_for_function(
                        "document.getElementById('sessions_by_state').innerText"
                        ".includes('succeeded\\t2')", timeout=20_000)
                    return first, live, await rows(page)
                finally:
                    await browser.close()

    first, live, then = asyncio.run(go())
    assert first == {"failed": "1", "succeeded": "1"}
    assert live == "every 0.5 s"
    assert then == {"failed": "1", "succeeded": "2"}
