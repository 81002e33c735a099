-- Tables every service with a database shares.

-- Transactional outbox: a state change and the events it publishes commit together;
-- the relay publishes rows in id order and marks them sent.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Consumer dedupe: an event's effects and its row here commit in one transaction, so a
-- redelivered or replayed event (same event_id) is recognised and skipped.
CREATE TABLE processed_events (
    event_id      uuid PRIMARY KEY,
    event_type    text NOT NULL,
    topic         text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset  bigint NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
