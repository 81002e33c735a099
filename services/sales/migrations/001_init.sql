-- The sales service's state. Shared tables (outbox, processed_events) come from shared/migrations.

-- A replica of the leads service's leads, built only from lead events.
CREATE TABLE leads (
    lead_id     uuid PRIMARY KEY,
    email       text,                  -- NULL until a lead.created or lead.touched says it
    stage       text NOT NULL,
    created_at  timestamptz NOT NULL,
    attribution jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leads_first_campaign ON leads ((attribution -> 'first_touch' ->> 'campaign_id'));
CREATE INDEX leads_last_campaign ON leads ((attribution -> 'last_touch' ->> 'campaign_id'));

CREATE TABLE deals (
    deal_id             uuid PRIMARY KEY,
    -- Insertion order: the keyset for listing (created_at can be backfilled, seq cannot).
    seq                 bigserial UNIQUE,
    lead_id             uuid NOT NULL REFERENCES leads (lead_id),
    name                text,
    stage               text NOT NULL
                        CHECK (stage IN ('qualification', 'proposal', 'negotiation', 'won', 'lost')),
    amount              numeric(16, 2) CHECK (amount > 0),
    currency            text NOT NULL,
    expected_close_date date,
    created_at          timestamptz NOT NULL,
    -- When the deal entered its current stage (history stays in time order).
    stage_entered_at    timestamptz NOT NULL,
    closed_at           timestamptz,
    lost_reason         text,
    objections          text[] NOT NULL DEFAULT '{}',
    -- The lead.stage_changed event that handed this deal over; a second guard (beside
    -- processed_events) so one SQL transition never yields two deals.
    source_event_id     uuid UNIQUE,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deals_lead ON deals (lead_id, seq);
CREATE INDEX deals_stage ON deals (stage, seq);

CREATE TABLE deal_stage_history (
    id           bigserial PRIMARY KEY,
    deal_id      uuid NOT NULL REFERENCES deals (deal_id),
    from_stage   text,                 -- NULL: the deal was created in to_stage
    to_stage     text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deal_stage_history_deal ON deal_stage_history (deal_id, id);

-- A lead becomes a customer with the first won deal sales records for it.
CREATE TABLE customers (
    lead_id        uuid PRIMARY KEY REFERENCES leads (lead_id),
    first_deal_id  uuid NOT NULL REFERENCES deals (deal_id),
    customer_since timestamptz NOT NULL
);

CREATE TABLE revenue (
    -- = the client's event_id when it sent one: the idempotency key.
    revenue_id  uuid PRIMARY KEY,
    seq         bigserial UNIQUE,
    lead_id     uuid NOT NULL REFERENCES customers (lead_id),
    amount      numeric(16, 2) NOT NULL CHECK (amount > 0),
    currency    text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('purchase', 'renewal', 'upsell')),
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revenue_lead ON revenue (lead_id, seq);
