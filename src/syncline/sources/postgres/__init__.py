"""PostgreSQL change capture through logical replication (pgoutput). Needs psycopg2."""

from syncline.sources.postgres.source import PostgresSource

__all__ = ["PostgresSource"]
