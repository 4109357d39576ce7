"""Apache Kafka transport (the ``kafka`` extra: confluent-kafka). See transport.py."""

from syncline.transports.kafka.transport import KafkaTransport

__all__ = ["KafkaTransport"]
