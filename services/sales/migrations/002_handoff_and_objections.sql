-- The handoff (sales accepts or rejects a deal opened by a lead reaching SQL) and objections
-- counted under the keys of the objections vocabulary.

ALTER TABLE deals DROP CONSTRAINT deals_stage_check;
ALTER TABLE deals ADD CONSTRAINT deals_stage_check
    CHECK (stage IN ('qualification', 'proposal', 'negotiation', 'won', 'lost', 'rejected'));

ALTER TABLE deals
    -- True for a deal opened by a lead reaching SQL: sales answers it (accept or reject).
    ADD COLUMN handoff boolean NOT NULL DEFAULT false,
    ADD COLUMN accepted_at timestamptz,
    ADD COLUMN rejected_at timestamptz,
    ADD COLUMN rejection_reason text;

-- Deals made before handoffs were answered published deal.created without `handoff`: they
-- need no answer, and count as taken when they were opened (as deals opened through the API).
UPDATE deals SET accepted_at = created_at;

ALTER TABLE deals ADD CONSTRAINT deals_answered_once CHECK (accepted_at IS NULL OR rejected_at IS NULL);
ALTER TABLE deals ADD CONSTRAINT deals_rejected_with_reason
    CHECK ((stage = 'rejected') = (rejected_at IS NOT NULL AND rejection_reason IS NOT NULL));

-- Every objection recorded on a deal (open, won, or with its loss), as recorded and under
-- the vocabulary key it counted under when recorded (published with that key).
CREATE TABLE deal_objections (
    id          bigserial PRIMARY KEY,
    deal_id     uuid NOT NULL REFERENCES deals (deal_id),
    key         text NOT NULL,
    text        text NOT NULL,
    stage       text NOT NULL,         -- the deal's stage then: open, won, or lost for a loss's
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deal_objections_deal ON deal_objections (deal_id, id);
