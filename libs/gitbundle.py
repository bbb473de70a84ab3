"""Git bundles: the commits one repository has and another lacks, as one file.

Every function blocks (it runs git); call it through ``asyncio.to_thread`` from async
code. Git failures raise ``RuntimeError`` carrying git's stderr.
"""

from __future__ import annotations

from pathlib import Path

from libs.worktree import git

#: seconds one bundle may take to write or read (large repositories)
BUNDLE_TIMEOUT = 1800.0


def present(repo: str, shas: list[str]) -> list[str]:
    """The commits of ``shas`` that ``repo`` has."""
    if not shas:
        return []
    out = git(repo, "cat-file", "--batch-check=%(objectname) %(objecttype)",
              input="".join(f"{s}\n" for s in shas))
    return [line.split()[0] for line in out.splitlines() if line.endswith(" commit")]


def has_commit(repo: str, sha: str) -> bool:
    return bool(sha) and present(repo, [sha]) == [sha]


def create(repo: str, refs: dict[str, str], exclude: list[str], out: Path) -> bool:
    """Write a bundle of ``refs`` (ref name -> commit; each ref is set to its commit
    first) less everything ``exclude`` (commits ``repo`` has) reaches. False, and no file,
    when there is nothing to send."""
    for name, sha in refs.items():
        git(repo, "update-ref", name, sha)
    try:
        args = ["bundle", "create", "-q", str(out), *refs]
        if exclude:
            args += ["--not", *exclude]
        try:
            git(repo, *args, timeout=BUNDLE_TIMEOUT)
        except RuntimeError as exc:
            if "empty bundle" in str(exc):
                return False
            raise
        return True
    finally:
        for name in refs:
            if name.startswith("refs/ccaa/transfer/"):  # temporary names only
                git(repo, "update-ref", "-d", name, check=False)


def fetch(repo: str, bundle: Path, refspecs: list[str]) -> None:
    """Take the bundle's objects and refs into ``repo`` (``src:dst`` refspecs)."""
    git(repo, "fetch", "-q", "--no-tags", "--no-write-fetch-head", str(bundle), *refspecs,
        timeout=BUNDLE_TIMEOUT)


def heads(repo: str, prefix: str, limit: int = 100) -> list[str]:
    """The commits the newest ``limit`` refs under ``prefix`` point at."""
    out = git(repo, "for-each-ref", "--sort=-committerdate", f"--count={limit}",
              "--format=%(objectname)", prefix)
    return sorted(set(out.split()))
