"""librdkafka errors → syncline's tree, once, at the boundary.

Broker unreachable or slow → ``TransportError`` (retried); credentials or ACLs →
``AuthError``; settings the client or broker rejects → ``ConfigError``; a record
larger than the topic allows → ``DataError``. A fenced producer is a
``TransportError``: the capture loop reopens and the newer producer's
checkpoint decides what is published next.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from syncline.errors import (
    AuthError,
    ConfigError,
    DataError,
    SynclineError,
    TransportError,
)

_E = KafkaError
_UNREACHABLE = {
    _E._TRANSPORT,
    _E._ALL_BROKERS_DOWN,
    _E._RESOLVE,
    _E._TIMED_OUT,
    _E._MSG_TIMED_OUT,
    _E.REQUEST_TIMED_OUT,
    _E.NETWORK_EXCEPTION,
    _E.BROKER_NOT_AVAILABLE,
}
_AUTH = {
    _E._AUTHENTICATION,
    _E.SASL_AUTHENTICATION_FAILED,
    _E.UNSUPPORTED_SASL_MECHANISM,
    _E.ILLEGAL_SASL_STATE,
    _E.TOPIC_AUTHORIZATION_FAILED,
    _E.GROUP_AUTHORIZATION_FAILED,
    _E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    _E.CLUSTER_AUTHORIZATION_FAILED,
}
_FENCED = {_E._FENCED, _E.PRODUCER_FENCED, _E.INVALID_PRODUCER_EPOCH}
_CONFIG = {
    _E._INVALID_ARG,
    _E.INVALID_REPLICATION_FACTOR,
    _E.INVALID_PARTITIONS,
    _E.INVALID_CONFIG,
    _E.POLICY_VIOLATION,
    _E.INVALID_TRANSACTION_TIMEOUT,
    _E._SSL,
}
_TOO_LARGE = {_E.MSG_SIZE_TOO_LARGE, _E.RECORD_LIST_TOO_LARGE}


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaError):
        return exc
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def translate(exc: BaseException | KafkaError, where: str, doing: str) -> SynclineError:
    """``where`` names the cluster (bootstrap servers), ``doing`` the operation."""
    err = kafka_error(exc) if isinstance(exc, BaseException) else exc
    if err is None:
        return TransportError(f"kafka at {where}: {doing}: {exc}")
    code = err.code()
    text = " ".join(err.str().split())  # one line
    if code in _FENCED:
        return TransportError(
            f"kafka at {where}: {doing}: this producer was fenced: another syncline process "
            "took over the log's transactional id; it continues from its own checkpoint"
        )
    if code in _AUTH:
        return AuthError(
            f"kafka at {where} refused access while {doing} ({err.name()}: {text}); "
            "check transport.security and the ACLs for the topics, group and transactional id"
        )
    if code in _CONFIG:
        return ConfigError(f"kafka at {where}: {doing}: {text}")
    if code in _TOO_LARGE:
        return DataError(
            f"kafka at {where}: {doing}: a record is larger than the broker accepts ({text}); "
            "raise transport.max_message_bytes (and the broker's message.max.bytes)"
        )
    if code in _UNREACHABLE:
        return TransportError(f"kafka at {where} is not reachable while {doing} ({text})")
    return TransportError(f"kafka at {where}: {doing}: {err.name()}: {text}")
