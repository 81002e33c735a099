"""EMBUDO_* settings of the leads service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from fastapi import Depends
from pydantic import Field, field_validator

from shared.settings import ServiceSettings, current_settings

from .domain import ScoringRules

DEFAULT_SCORING_CONFIG = Path(__file__).parent / "scoring.yaml"


class LeadsSettings(ServiceSettings):
    # EMBUDO_SCORING_CONFIG: the YAML file with the scoring rules.
    scoring_config: Path = DEFAULT_SCORING_CONFIG
    # EMBUDO_MQL_THRESHOLD: score at which a lead moves to mql by itself; unset = never.
    mql_threshold: int | None = Field(default=None, ge=0)

    @field_validator("mql_threshold", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


def load_scoring_rules(path: Path) -> ScoringRules:
    """Read and validate the scoring file; a bad file stops start-up with its name in the error."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return ScoringRules.model_validate(raw)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise SystemExit(f"invalid scoring config {path}: {exc}") from exc


Settings = Annotated[LeadsSettings, Depends(current_settings)]
