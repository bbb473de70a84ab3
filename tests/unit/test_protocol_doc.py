"""PROTOCOL.md documents every message type, and its generated part is current."""

from pathlib import Path

from protocols.doc import BEGIN, END, render
from protocols.registry import MESSAGE_TYPES

DOC = Path(__file__).resolve().parents[2] / "protocols" / "PROTOCOL.md"


def test_generated_reference_is_current():
    text = DOC.read_text()
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    assert current == render(), "run: python -m protocols.doc --write"


def test_every_type_has_a_section_and_a_route():
    text = DOC.read_text()
    for type_ in MESSAGE_TYPES:
        assert f"### `{type_}`" in text
        assert f"### `{type_}`\n\n?." not in text, f"{type_} has no sender/receiver in ROUTES"
