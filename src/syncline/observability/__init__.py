"""Prometheus metrics and structured logs (the monitoring store is ``syncline.monitoring``)."""
