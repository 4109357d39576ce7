"""Change-data-capture sources. Each backend module imports its own driver."""
