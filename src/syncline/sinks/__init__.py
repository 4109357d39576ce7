"""Targets that changes are applied to (databases, later caches and webhooks)."""
