"""EMBUDO_* settings of the sales service."""

from __future__ import annotations

from pydantic import field_validator

from shared.settings import ServiceSettings

DEFAULT_STAGE_PROBABILITIES = {"qualification": 0.2, "proposal": 0.5, "negotiation": 0.8}


class SalesSettings(ServiceSettings):
    port: int = 8003
    # Chance that a deal in each open stage is won, e.g.
    # EMBUDO_STAGE_PROBABILITIES='{"qualification": 0.1, "proposal": 0.4, "negotiation": 0.7}'
    stage_probabilities: dict[str, float] = dict(DEFAULT_STAGE_PROBABILITIES)
    # How far ahead of our clock a client's occurred_at may be (its clock runs a bit fast)
    # before it counts as "in the future".
    clock_skew_seconds: float = 60.0

    @field_validator("stage_probabilities")
    @classmethod
    def _every_open_stage_once(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(DEFAULT_STAGE_PROBABILITIES):
            raise ValueError(f"needs exactly the open stages {sorted(DEFAULT_STAGE_PROBABILITIES)}")
        if not all(0.0 <= p <= 1.0 for p in value.values()):
            raise ValueError("probabilities lie between 0 and 1")
        return value
