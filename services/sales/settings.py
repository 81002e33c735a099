"""EMBUDO_* settings of the sales service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from pydantic import field_validator

from shared.rules import OPEN_DEAL_STAGES
from shared.settings import ServiceSettings, current_settings

DEFAULT_STAGE_PROBABILITIES = dict(zip(OPEN_DEAL_STAGES, (0.2, 0.5, 0.8), strict=True))


class SalesSettings(ServiceSettings):
    # Chance that a deal in each open stage is won, e.g.
    # EMBUDO_STAGE_PROBABILITIES='{"qualification": 0.1, "proposal": 0.4, "negotiation": 0.7}'
    stage_probabilities: dict[str, float] = dict(DEFAULT_STAGE_PROBABILITIES)

    @field_validator("stage_probabilities")
    @classmethod
    def _every_open_stage_once(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(OPEN_DEAL_STAGES):
            raise ValueError(f"needs exactly the open stages {sorted(OPEN_DEAL_STAGES)}")
        if not all(0.0 <= p <= 1.0 for p in value.values()):
            raise ValueError("probabilities lie between 0 and 1")
        return value


Settings = Annotated[SalesSettings, Depends(current_settings)]
