"""EMBUDO_* settings of the sales service."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

import yaml
from fastapi import Depends
from pydantic import field_validator

from shared.rules import OPEN_DEAL_STAGES
from shared.settings import ServiceSettings, current_settings

from .domain import ObjectionVocabulary

DEFAULT_STAGE_PROBABILITIES = dict(zip(OPEN_DEAL_STAGES, (0.2, 0.5, 0.8), strict=True))
DEFAULT_OBJECTIONS_CONFIG = Path(__file__).parent / "objections.yaml"


class SalesSettings(ServiceSettings):
    # Chance that a deal in each open stage is won, e.g.
    # EMBUDO_STAGE_PROBABILITIES='{"qualification": 0.1, "proposal": 0.4, "negotiation": 0.7}'
    stage_probabilities: dict[str, float] = dict(DEFAULT_STAGE_PROBABILITIES)
    # EMBUDO_OBJECTIONS_CONFIG: the YAML file with the objections vocabulary.
    objections_config: Path = DEFAULT_OBJECTIONS_CONFIG

    @field_validator("stage_probabilities")
    @classmethod
    def _every_open_stage_once(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(OPEN_DEAL_STAGES):
            raise ValueError(f"needs exactly the open stages {sorted(OPEN_DEAL_STAGES)}")
        if not all(0.0 <= p <= 1.0 for p in value.values()):
            raise ValueError("probabilities lie between 0 and 1")
        return value

    @cached_property
    def objections(self) -> ObjectionVocabulary:
        """Read once; build_app reads it at start-up, so a bad file stops the service there."""
        return load_objections(self.objections_config)


def load_objections(path: Path) -> ObjectionVocabulary:
    """Read and validate the objections file; a bad file stops start-up with its name in the error."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return ObjectionVocabulary.model_validate(raw)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise SystemExit(f"invalid objections config {path}: {exc}") from exc


Settings = Annotated[SalesSettings, Depends(current_settings)]
