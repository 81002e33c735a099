-- One database per service that keeps state (the postgres image runs this once, on first start).
CREATE DATABASE embudo_leads OWNER embudo;
CREATE DATABASE embudo_sales OWNER embudo;
CREATE DATABASE embudo_metrics OWNER embudo;
