"""Monitoring stream and store: per-change stage records and ``syncline trace``."""

from syncline.monitoring.monitor import Monitor, PipelineMonitor
from syncline.monitoring.trace import TraceRecord, find

__all__ = ["Monitor", "PipelineMonitor", "TraceRecord", "find"]
