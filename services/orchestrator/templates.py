"""Execution strategies: each command type maps to a workflow template kept as data
(``templates/<type>.yaml``); a user's templates directory may override or add any."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUILTIN_DIR = Path(__file__).with_name("templates")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SingleStage(_Model):
    """One task does the whole command (RUN, ANALYZE_PROJECT)."""

    role: str = "worker"
    kind: str = "run"
    isolate: bool = True
    instructions: str = ""
    #: analyze: the sections the analysis must have, each naming a real file
    sections: list[str] = []
    #: analyze: times an incomplete analysis is asked again
    max_rounds: int = Field(2, ge=0)


class PlanStage(_Model):
    role: str = "architect"
    max_rounds: int = Field(2, ge=1)
    instructions: str = ""


class ReviewStage(_Model):
    role: str = "manager"
    max_rounds: int = Field(2, ge=1)


class WorkStage(_Model):
    review: ReviewStage | None = None


class Template(_Model):
    type: str
    description: str = ""
    single: SingleStage | None = None
    plan: PlanStage | None = None
    work: WorkStage = WorkStage()
    gates: list[str] = []
    merge: bool = True
    final_gates: list[str] = []
    escalation: list[str] = ["worker", "manager", "architect"]
    cache: bool = False
    max_parallel: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, gt=0)

    def model_post_init(self, _context: object) -> None:
        if (self.single is None) == (self.plan is None):
            raise ValueError("a template has exactly one of `single` or `plan`")


class TemplateError(Exception):
    pass


def load_file(path: Path) -> Template:
    try:
        raw = yaml.safe_load(path.read_text())
        return Template.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from None
    except (ValidationError, ValueError) as exc:
        raise TemplateError(f"template {path} is invalid: {exc}") from None


def load_templates(user_dir: str = "") -> dict[str, Template]:
    """Built-in templates, then the user's (same type: the user's wins)."""
    templates: dict[str, Template] = {}
    dirs = [BUILTIN_DIR] + ([Path(user_dir).expanduser()] if user_dir else [])
    for directory in dirs:
        if not directory.is_dir():
            raise TemplateError(f"templates directory {directory} does not exist")
        for path in sorted(directory.glob("*.yaml")):
            template = load_file(path)
            templates[template.type] = template
    return templates
