"""Embudo's common library: event schemas, topics, Kafka and Postgres plumbing, HTTP helpers."""
