"""Durable logs between capture and apply (embedded by default)."""
