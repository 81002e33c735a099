-- Metrics' projections: one fact row per entity, merged so that any arrival order of the
-- same events gives the same rows (created_at only moves back, first touch = earliest,
-- last touch = latest, stages only go up). KPIs are SQL aggregates over these at query time.

-- One row per lead, fed by lead events and by every deal/revenue event (which carry the
-- lead's attribution), so a deal that arrives before its lead still lands.
CREATE TABLE leads (
    lead_id            uuid PRIMARY KEY,
    created_at         timestamptz,          -- null while only revenue events have been seen
    first_campaign_id  text,
    first_channel      text,
    first_touch_at     timestamptz NOT NULL,
    last_campaign_id   text,
    last_channel       text,
    last_touch_at      timestamptz NOT NULL,
    stage_rank         smallint NOT NULL DEFAULT 0,  -- highest stage reached: 0 lead, 1 mql, 2 sql
    has_deal           boolean NOT NULL DEFAULT false,
    first_won_at       timestamptz             -- its first won deal: when it became a customer
);
CREATE INDEX leads_created_at ON leads (created_at);
CREATE INDEX leads_first_won_at ON leads (first_won_at) WHERE first_won_at IS NOT NULL;

CREATE TABLE deals (
    deal_id      uuid PRIMARY KEY,
    lead_id      uuid NOT NULL,
    created_at   timestamptz,
    won_at       timestamptz,
    won_amount   numeric(18, 2),
    currency     text,
    lost_at      timestamptz,
    lost_reason  text,
    objections   text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX deals_lead ON deals (lead_id);
CREATE INDEX deals_won_at ON deals (won_at) WHERE won_at IS NOT NULL;
CREATE INDEX deals_lost_at ON deals (lost_at) WHERE lost_at IS NOT NULL;

CREATE TABLE revenue (
    revenue_id   uuid PRIMARY KEY,
    lead_id      uuid NOT NULL,
    amount       numeric(18, 2) NOT NULL,
    currency     text NOT NULL,
    kind         text NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX revenue_lead ON revenue (lead_id);
CREATE INDEX revenue_occurred_at ON revenue (occurred_at);

-- One row per campaign event (its event time is the envelope's occurred_at).
CREATE TABLE campaign_facts (
    event_id     uuid PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    campaign_id  text NOT NULL,
    channel      text NOT NULL,
    impressions  bigint NOT NULL DEFAULT 0,
    clicks       bigint NOT NULL DEFAULT 0,
    spend        numeric(18, 2) NOT NULL DEFAULT 0,
    currency     text
);
CREATE INDEX campaign_facts_occurred_at ON campaign_facts (occurred_at);

-- Bumped in the same transaction as every applied event: `version` makes ETags,
-- `as_of` is the newest event time applied. `epoch` tells a rebuilt database's version 5
-- from the old one's.
CREATE TABLE projection_state (
    id       smallint PRIMARY KEY CHECK (id = 1),
    epoch    uuid NOT NULL DEFAULT gen_random_uuid(),
    version  bigint NOT NULL DEFAULT 0,
    as_of    timestamptz
);
INSERT INTO projection_state (id) VALUES (1);
