"""ANALYZE_PROJECT's completeness gate: the sections asked for, each naming a real file."""

from __future__ import annotations

import pytest

from services.orchestrator.completeness import check, real_paths, sections_of

pytestmark = pytest.mark.timeout(30)

TREE = {"calc/__init__.py", "calc/core.py", "tests/test_core.py", "README.md"}
WANTED = ["structure", "build and test", "risks", "recommendations"]


def test_markdown_headings_with_real_files_are_complete():
    text = ("# Analysis of calc\n## Structure\nThe package is `calc/`, mostly calc/core.py.\n"
            "## How to build and test\nRun pytest on tests/test_core.py.\n"
            "## Risks\n- **Float precision**: calc/core.py:2 adds floats.\n"
            "## Recommendations\n1. Document calc/__init__.py in README.md.\n")
    got = check(text, WANTED, TREE)
    assert got.complete, got
    assert got.files["structure"] == ["calc", "calc/core.py"]
    assert got.files["risks"] == ["calc/core.py"]


def test_labels_count_as_sections_and_what_is_missing_is_said():
    text = ("Structure: calc/core.py holds add.\nBuild and test: python -m pytest.\n"
            "Recommendations: add checks to calc/core.py.")
    got = check(text, WANTED, TREE)
    assert not got.complete
    assert got.missing == ["risks"] and got.unsupported == ["build and test"]
    assert got.feedback() == ("missing sections: risks; sections that name no file of the "
                              "repository: build and test")


def test_files_that_do_not_exist_do_not_count():
    assert real_paths("see src/main.py and calc/nope.py, then calc/core.py:10", TREE) == \
        ["calc/core.py"]
    assert sections_of("Intro\nRisks: none\nMore", ["risks"]) == {"risks": "Risks: none\nMore"}
