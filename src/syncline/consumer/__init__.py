"""Idempotent consumer: process each syncline change event once, in the service's own database.

A service that reads change events (from the log, a queue, an HTTP push) may see
one event more than once: after a crash before it acknowledged, on a retry, on a
replay. ``@idempotent`` records the event's id in the service's database in the
same transaction as the handler's writes, so a redelivered event is recognised
and skipped. See docs/consumer.md.

    @idempotent(consumer="billing")
    def on_order(conn, event):
        ...  # writes through conn; no commit

    result = on_order(conn, event)  # the handler's result, or Duplicate(...)
"""

from syncline.consumer.db import DEFAULT_TABLE, ensure_table, purge_processed
from syncline.consumer.handler import Duplicate, idempotent
from syncline.consumer.ids import event_id

__all__ = [
    "DEFAULT_TABLE",
    "Duplicate",
    "ensure_table",
    "event_id",
    "idempotent",
    "purge_processed",
]
