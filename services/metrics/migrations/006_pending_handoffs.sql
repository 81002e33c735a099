-- The handoffs still waiting for sales' answer, oldest first: what GET /v1/sla/overdue reads
-- (those created more than the SLA ago). Small: a handoff leaves it when it is answered.
CREATE INDEX deals_pending_handoffs ON deals (created_at, deal_id)
    WHERE handoff AND accepted_at IS NULL AND rejected_at IS NULL AND won_at IS NULL AND lost_at IS NULL;
