"""ANALYZE_PROJECT's gate: an analysis is complete when it has every section its template
asks for (structure, how to build and test, risks, recommendations, ...) and each of them
names at least one file or directory that really exists at the analysed commit. What is
missing goes back to the architect, in so many words."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: section -> words that open it (a heading, a label, a numbered item)
SECTION_WORDS = {
    "purpose": r"purpose|overview|summary|what it (?:is|does)",
    "structure": r"structure|architecture|layout|modules|components|organi[sz]ation",
    "build and test": r"build|test(?:s|ing)?\b|how to run|setup|install",
    "risks": r"risks?|issues|bugs|concerns|problems|weaknesses|security",
    "recommendations": r"recommendations?|next steps|suggestions?|improvements|to ?do",
}
#: a line that opens a section: markdown heading, bold label, numbered label, "Label:"
HEADING = re.compile(r"^\s{0,3}(?:#{1,6}\s*|\*\*|__|\d+[.)]\s*|[-*]\s+\*\*)?"
                     r"(?P<title>[A-Za-z][A-Za-z &/,()-]{0,60}?)\s*(?:\*\*|__)?\s*(?::|$)")
#: something that looks like a path in prose: a/b, a/b.py, file.ext (a :line suffix allowed)
PATH = re.compile(r"(?<![\w@])([\w.-]+(?:/[\w.-]+)*/?)(?::\d+)?")


@dataclass
class Check:
    complete: bool
    missing: list[str] = field(default_factory=list)  # sections not there
    unsupported: list[str] = field(default_factory=list)  # there, naming no real file
    files: dict[str, list[str]] = field(default_factory=dict)  # section -> real paths named

    def feedback(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing sections: " + ", ".join(self.missing))
        if self.unsupported:
            parts.append("sections that name no file of the repository: "
                         + ", ".join(self.unsupported))
        return "; ".join(parts)


def sections_of(text: str, wanted: list[str]) -> dict[str, str]:
    """The text of each wanted section: from the line that opens it to the next line that
    opens another one."""
    starts: list[tuple[int, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = HEADING.match(line)
        if not m:
            continue
        title = m.group("title").lower()
        for name in wanted:
            if name not in (s for _, s in starts) and re.search(
                    rf"\b(?:{SECTION_WORDS.get(name, re.escape(name))})", title):
                starts.append((i, name))
                break
    out = {}
    bounds = sorted(starts) + [(len(lines), "")]
    for (start, name), (end, _) in zip(bounds, bounds[1:]):
        out[name] = "\n".join(lines[start:end])
    return out


def real_paths(text: str, tree: set[str]) -> list[str]:
    """Paths named in ``text`` that are files or directories of ``tree`` (the commit's
    file list)."""
    dirs = {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
    found = []
    for m in PATH.finditer(text):
        token = m.group(1).strip(".").rstrip("/")
        if token and (token in tree or token in dirs) and token not in found:
            found.append(token)
    return found


def check(text: str, wanted: list[str], tree: set[str]) -> Check:
    sections = sections_of(text, wanted)
    result = Check(complete=True)
    for name in wanted:
        body = sections.get(name)
        if body is None:
            result.missing.append(name)
            continue
        named = real_paths(body, tree)
        result.files[name] = named
        if not named:
            result.unsupported.append(name)
    result.complete = not result.missing and not result.unsupported
    return result
