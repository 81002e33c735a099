"""The envelope's contract: strict metadata, typed data, UTC times, upcasting old versions."""

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar

import pytest
from pydantic import ValidationError

from shared import events
from shared.events import EVENT_TYPES, CampaignEvent, Envelope, EventData, UnknownEventType


def test_an_envelope_survives_bytes_with_its_typed_data_and_utc_times():
    madrid = timezone(timedelta(hours=1))
    sent = Envelope.wrap(
        CampaignEvent(campaign_id="spring", channel="cpc", event="spend", cost={"amount": "12.50", "currency": "EUR"}),
        source="test",
        key="spring",
        occurred_at=datetime(2026, 3, 1, 10, 0, tzinfo=madrid),
    )
    received = Envelope.from_bytes(sent.to_bytes())
    assert received == sent
    assert received.occurred_at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert str(received.data.cost.amount) == "12.50"
    assert b'"amount":"12.50"' in sent.to_bytes()  # money travels as a string, never a float


def test_unknown_types_naive_times_and_bad_data_are_refused():
    good = Envelope.wrap(
        CampaignEvent(campaign_id="c", channel="cpc", event="click"), source="t", key="c", occurred_at=datetime.now(UTC)
    )
    raw = good.model_dump(mode="json")
    with pytest.raises(UnknownEventType):
        Envelope.from_bytes(Envelope.model_validate(raw | {"type": "no.such"}).model_dump_json())
    with pytest.raises(ValidationError):
        Envelope.from_bytes(good.model_dump_json().replace("+00:00", "").replace("Z", ""))
    with pytest.raises(ValidationError):
        Envelope.from_bytes(Envelope.model_validate(raw | {"data": {"event": "click"}}).model_dump_json())


def test_an_old_version_is_upcast_before_its_handler_sees_it(monkeypatch):
    class Renamed(EventData):
        event_type: ClassVar[str] = "test.renamed"
        version: ClassVar[int] = 2
        campaign_id: str  # version 1 called it "campaign"

    monkeypatch.setitem(EVENT_TYPES, "test.renamed", Renamed)
    monkeypatch.setattr(events, "UPCASTERS", {})
    events.register_upcaster("test.renamed", 1)(lambda d: {"campaign_id": d["campaign"]})

    old = Envelope(
        event_id=uuid.uuid4(),
        type="test.renamed",
        version=1,
        source="old-service",
        occurred_at=datetime.now(UTC),
        recorded_at=datetime.now(UTC),
        key="k",
        data={"campaign": "spring"},
    )
    decoded = Envelope.from_bytes(old.model_dump_json())
    assert decoded.version == 2
    assert decoded.data == Renamed(campaign_id="spring")
