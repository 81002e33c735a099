"""Every Kafka topic Embudo uses: its name, what keys it (and so what stays in order), its size.

Topics are created explicitly by `ensure_topics` (the broker's auto-create is off), so
partition counts are decided here, not by whichever client touches a topic first.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.events import (
    CampaignEvent,
    CustomerRevenueRecorded,
    DealAccepted,
    DealCreated,
    DealDetailsChanged,
    DealLost,
    DealObjectionsRecorded,
    DealRejected,
    DealStageChanged,
    DealWon,
    EventData,
    FormSubmission,
    LeadCreated,
    LeadStageChanged,
    LeadTouched,
    PageView,
)


@dataclass(frozen=True)
class Topic:
    name: str
    keyed_by: str
    partitions: int
    event_types: tuple[type[EventData], ...]  # what it carries: the one topic of each event type


FORM_SUBMISSIONS = Topic(
    "embudo.ingest.form-submissions.v1",
    keyed_by="normalised email (one person's submissions stay in order)",
    partitions=6,
    event_types=(FormSubmission,),
)
PAGE_VIEWS = Topic(
    "embudo.ingest.page-views.v1",
    keyed_by="anonymous_id (one visitor's page views stay in order)",
    partitions=6,
    event_types=(PageView,),
)
CAMPAIGN_EVENTS = Topic(
    "embudo.ingest.campaign-events.v1",
    keyed_by="campaign_id",
    partitions=6,
    event_types=(CampaignEvent,),
)
LEAD_EVENTS = Topic(
    "embudo.leads.lead-events.v1",
    keyed_by="lead_id (a lead's creation, touches and stage changes stay in order)",
    partitions=6,
    event_types=(LeadCreated, LeadTouched, LeadStageChanged),
)
DEAL_EVENTS = Topic(
    "embudo.sales.deal-events.v1",
    keyed_by="lead_id (a customer's deals and revenue stay in order)",
    partitions=6,
    event_types=(
        DealCreated,
        DealDetailsChanged,
        DealAccepted,
        DealRejected,
        DealObjectionsRecorded,
        DealStageChanged,
        DealWon,
        DealLost,
        CustomerRevenueRecorded,
    ),
)


def dead_letter_topic(consumer_group: str) -> Topic:
    """Each consuming service parks the messages it cannot process on its own DLQ."""
    return Topic(
        f"embudo.{consumer_group}.dlq.v1",
        keyed_by="the original message's key",
        partitions=1,
        event_types=(),
    )


CONSUMER_GROUPS = ("leads", "sales", "metrics")
EVENT_TOPICS = (FORM_SUBMISSIONS, PAGE_VIEWS, CAMPAIGN_EVENTS, LEAD_EVENTS, DEAL_EVENTS)
ALL_TOPICS = EVENT_TOPICS + tuple(dead_letter_topic(group) for group in CONSUMER_GROUPS)


def topic_of(event_type: type[EventData]) -> Topic:
    """The topic an event type is published on."""
    for topic in EVENT_TOPICS:
        if event_type in topic.event_types:
            return topic
    raise KeyError(event_type.event_type)


def topic_configs(replication_factor: int) -> dict[str, str]:
    """Broker settings for a new topic.

    retention.ms=-1: the topics are the funnel's history, kept for good. A projection can
    then be rebuilt by replaying them, and a message parked on a DLQ never expires before
    someone has looked at it (the broker's default would delete both after 7 days). Disk
    grows with the events; an operator who wants a limit sets it on the topic.
    min.insync.replicas: with replicas, an acks=all write is on at least two of them."""
    configs = {"retention.ms": "-1"}
    if replication_factor > 1:
        configs["min.insync.replicas"] = "2"
    return configs


async def ensure_topics(
    bootstrap_servers: str,
    topics: tuple[Topic, ...] = ALL_TOPICS,
    *,
    replication_factor: int = 1,
    prefix: str = "",
) -> None:
    """Create any missing topic; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="embudo-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=prefix + t.name,
                num_partitions=t.partitions,
                replication_factor=replication_factor,
                topic_configs=topic_configs(replication_factor),
            )
            for t in topics
            if prefix + t.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another service created it first
    finally:
        await admin.close()


async def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete every topic of a namespace (a test's or a benchmark's), DLQs included."""
    if not prefix:
        raise ValueError("refusing to delete the topics of the default namespace")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="embudo-admin")
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
