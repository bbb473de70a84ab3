"""A host's repository cache stays bounded: have-refs beyond the newest are dropped."""

from __future__ import annotations

import os
import subprocess

import pytest

from libs import gitbundle, worktree
from services.agent import code

pytestmark = pytest.mark.timeout(60)


def test_only_the_newest_have_refs_stay(tmp_path):
    repo = str(tmp_path)
    subprocess.run(["git", "init", "-q", repo], check=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    tree = worktree.git(repo, "mktree", input="")
    commits = []
    parent: list[str] = []
    for i in range(12):  # committer dates 1..12: the newest are the last ones
        sha = subprocess.run(["git", "-C", repo, "commit-tree", tree, *parent, "-m", str(i)],
                             env={**os.environ, **env,
                                  "GIT_COMMITTER_DATE": f"{1_700_000_000 + i} +0000"},
                             check=True, capture_output=True, text=True).stdout.strip()
        parent = ["-p", sha]
        commits.append(sha)
        worktree.git(repo, "update-ref", f"{code.HAVE}{sha}", sha)
    code._prune_have(repo, keep=5)
    assert gitbundle.heads(repo, code.HAVE) == sorted(commits[-5:])
    # the commits themselves stay
    assert all(gitbundle.has_commit(repo, c) for c in commits)
