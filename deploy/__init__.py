"""The deployment files that ship with ccaa (`ccaa deploy DIR` writes them out).

They live beside this module, so a wheel install has them too: Prometheus' scrape config
and alert rules, Grafana's provisioning and dashboard, a Dockerfile and compose files,
systemd units, and the supervisord configurations (generated from
`services.cli.supervisor_conf`, the one place they are defined).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

def _shipped() -> dict[str, Path]:
    """Every file here but the Python that generates some of them."""
    return {str(p.relative_to(HERE)): p for p in sorted(HERE.rglob("*"))
            if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}


def files() -> dict[str, str]:
    """Every deployment file by its relative path, with its content."""
    from services.cli import supervisor_conf

    out = {name: path.read_text() for name, path in _shipped().items()}
    out[supervisor_conf.STACK_FILE] = supervisor_conf.stack_conf()
    out[supervisor_conf.NODE_FILE] = supervisor_conf.node_conf()
    return dict(sorted(out.items()))


def export(target: str | Path, force: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Write every file under ``target``: (written, already the same, differing and kept).
    A file that exists with other content is kept unless ``force``."""
    root = Path(target).expanduser()
    written, same, differ = [], [], []
    for name, text in files().items():
        path = root / name
        if path.exists():
            if path.read_text() == text:
                same.append(name)
                continue
            if not force:
                differ.append(name)
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(name)
    return written, same, differ
