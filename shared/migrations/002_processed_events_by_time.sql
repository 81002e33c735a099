-- Dedupe rows are pruned past their retention (EMBUDO_PROCESSED_EVENTS_RETENTION_DAYS):
-- the oldest are found by processed_at, not by scanning the table.
CREATE INDEX processed_events_by_time ON processed_events (processed_at);
