-- What a lead's submissions add up to (domain.LeadSummary: earliest and newest touch, the
-- newest answer per profile item, the forms submitted, the touch count). A new submission
-- merges into it, so its cost does not grow with the lead's touches. Written in the same transaction that creates the lead.
ALTER TABLE leads ADD COLUMN summary jsonb;
