-- Campaign facts summed per UTC hour, campaign, channel and currency, so a KPI period reads a
-- few rows per hour instead of every event (ad platforms may post one event per click: a
-- year was ~5M rows and 0.8 s to sum). The KPI queries take whole hours from here and the
-- facts of an hour a period's edge cuts from campaign_facts (store.py), so any period stays
-- exact.
CREATE TABLE campaign_hourly (
    hour         timestamptz NOT NULL,  -- date_trunc('hour', occurred_at, 'UTC')
    campaign_id  text NOT NULL,
    channel      text NOT NULL,
    currency     text NOT NULL,         -- '' for facts without one (they carry no spend)
    impressions  bigint NOT NULL,
    clicks       bigint NOT NULL,
    spend        numeric(18, 2) NOT NULL,
    facts        bigint NOT NULL,       -- how many campaign_facts rows are summed here
    PRIMARY KEY (hour, campaign_id, channel, currency)
);
CREATE INDEX campaign_hourly_campaign ON campaign_hourly (campaign_id, hour);

-- Kept by a trigger rather than by the projector's statement, so that every insert into
-- campaign_facts counts exactly once, in its own transaction: the consumer's batch and its
-- processed_events rows still commit together with it, an event inserted twice (replay) adds
-- nothing because ON CONFLICT DO NOTHING leaves it out of the transition table, and a replica
-- still running the previous release during a rolling deploy keeps the sums right too.
-- campaign_facts is insert-only; nothing in Embudo updates or deletes its rows.
CREATE FUNCTION campaign_hourly_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_hourly AS h (hour, campaign_id, channel, currency, impressions, clicks, spend, facts)
    SELECT date_trunc('hour', occurred_at, 'UTC'), campaign_id, channel, coalesce(currency, ''),
           sum(impressions), sum(clicks), sum(spend), count(*)
    FROM inserted
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4  -- every transaction locks rows in the same order: concurrent batches cannot deadlock
    ON CONFLICT (hour, campaign_id, channel, currency) DO UPDATE SET
        impressions = h.impressions + EXCLUDED.impressions,
        clicks = h.clicks + EXCLUDED.clicks,
        spend = h.spend + EXCLUDED.spend,
        facts = h.facts + EXCLUDED.facts;
    RETURN NULL;
END
$$;

-- No insert may slip between the backfill's snapshot and the trigger (a running replica of the
-- previous release): they wait for this migration's commit, then fire the trigger.
LOCK TABLE campaign_facts IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER campaign_facts_hourly AFTER INSERT ON campaign_facts
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION campaign_hourly_add();

INSERT INTO campaign_hourly (hour, campaign_id, channel, currency, impressions, clicks, spend, facts)
SELECT date_trunc('hour', occurred_at, 'UTC'), campaign_id, channel, coalesce(currency, ''),
       sum(impressions), sum(clicks), sum(spend), count(*)
FROM campaign_facts
GROUP BY 1, 2, 3, 4;
