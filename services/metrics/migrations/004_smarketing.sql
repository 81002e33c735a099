-- Smarketing (docs/kpis.md): when each lead first reached each stage, the handoff of a deal
-- to sales and its answer, a deal's values over time (the pipeline as of any moment), the
-- objections raised on a deal by vocabulary key, and disqualifications with their reasons.
-- Every merge stays order-independent: earliest times, flags that only go up, insert-only
-- histories, and what is derived from those (a lead's opportunity) recomputed from them.

-- First arrival at mql / sql: reaching a later stage (or having a deal) reaches the earlier
-- ones at that moment; the earliest such moment wins. Rows projected before this migration
-- get them (and everything below) from a rebuild (docs/operations.md).
ALTER TABLE leads
    ADD COLUMN mql_at timestamptz,
    ADD COLUMN sql_at timestamptz,
    -- Has a deal that was not rejected, and the earliest creation of one: derived from the
    -- lead's deal rows whenever one of them is written (store.py), never merged on its own.
    ADD COLUMN opportunity boolean NOT NULL DEFAULT false,
    ADD COLUMN opportunity_at timestamptz;

UPDATE leads l SET opportunity = l.has_deal,
                   opportunity_at = (SELECT min(created_at) FROM deals d WHERE d.lead_id = l.lead_id)
WHERE l.has_deal;

CREATE INDEX leads_mql_at ON leads (mql_at) WHERE mql_at IS NOT NULL;
CREATE INDEX leads_sql_at ON leads (sql_at) WHERE sql_at IS NOT NULL;
CREATE INDEX leads_opportunity_at ON leads (opportunity_at) WHERE opportunity_at IS NOT NULL;

ALTER TABLE deals
    ADD COLUMN handoff boolean NOT NULL DEFAULT false,  -- opened by its lead reaching SQL
    ADD COLUMN accepted_at timestamptz,                -- the earliest acceptance
    ADD COLUMN rejected_at timestamptz,                -- the earliest rejection (closes the deal)
    ADD COLUMN rejection_reason text,                  -- that rejection's reason
    -- When the deal was open: after its creation, up to and including its close (won, lost or
    -- rejected, the earliest). "Open at T" is `open_during @> T`: created before T, not closed
    -- before T. Null until the deal's creation is known; a close dated before it gives an
    -- empty range (never open) rather than an error.
    ADD COLUMN open_during tstzrange GENERATED ALWAYS AS (
        CASE WHEN created_at IS NULL THEN NULL
             ELSE tstzrange(created_at,
                            CASE WHEN coalesce(won_at, lost_at, rejected_at) IS NULL THEN NULL
                                 ELSE greatest(created_at, least(won_at, lost_at, rejected_at)) END,
                            '(]') END
    ) STORED;

CREATE INDEX deals_created_at ON deals (created_at);
CREATE INDEX deals_rejected_at ON deals (rejected_at) WHERE rejected_at IS NOT NULL;
CREATE INDEX deals_open_during ON deals USING gist (open_during);

-- What a deal was worth, and how likely to be won, from each change on: `details` rows
-- (deal.created, deal.details_changed: amount, currency, expected close date, as they were
-- from `at` on) and `stage` rows (deal.created, deal.stage_changed: the stage's probability,
-- null when the event did not say). Insert-only; the value as of T is the latest row before
-- T (ties by event id), so arrival order does not matter.
CREATE TABLE deal_values (
    deal_id              uuid NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('details', 'stage')),
    at                   timestamptz NOT NULL,
    event_id             uuid NOT NULL,
    amount               numeric(18, 2),
    currency             text,
    expected_close_date  date,
    probability          numeric,
    PRIMARY KEY (deal_id, kind, at, event_id)
);

-- The union of the objections raised on each deal (deal.objections_recorded, deal.lost):
-- the vocabulary's key and the text as recorded. Events from before the vocabulary name
-- texts only; they count under `other`.
CREATE TABLE deal_objections (
    deal_id  uuid NOT NULL,
    key      text NOT NULL,
    text     text NOT NULL,
    PRIMARY KEY (deal_id, key, text)
);

INSERT INTO deal_objections (deal_id, key, text)
SELECT DISTINCT deal_id, 'other', unnest(objections) FROM deals WHERE lost_at IS NOT NULL
ON CONFLICT DO NOTHING;

-- One row per move of a lead to `disqualified` that gave a reason.
CREATE TABLE disqualifications (
    event_id     uuid PRIMARY KEY,
    lead_id      uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    reason       text NOT NULL
);
CREATE INDEX disqualifications_occurred_at ON disqualifications (occurred_at);
