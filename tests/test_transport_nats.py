"""NATS JetStream as the log: the transport contract plus what only it promises."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from contract.transport_contract import (
    TABLE,
    TransportContract,
    drain,
    next_positions,
    rec,
)
from servers import NatsServer, start_nats
from syncline.config import NatsTransportConfig, parse_config
from syncline.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    StorageError,
    TransportError,
)
from syncline.transports import nats_producer
from syncline.transports.base import Record, Transport, partition_for
from syncline.transports.nats import NatsTransport


def pipeline_name(tmp_path: Path) -> str:
    return "t" + hashlib.blake2b(str(tmp_path).encode(), digest_size=6).hexdigest()


def make(server: NatsServer, tmp_path: Path, partitions: int = 4, **kw: object) -> NatsTransport:
    cfg = NatsTransportConfig.model_validate(
        {"kind": "nats", "servers": server.urls, "partitions": partitions, **kw}
    )
    return NatsTransport(cfg, pipeline_name(tmp_path))


def age_out(t: NatsTransport) -> None:
    """JetStream deletes by age: lower the stream's max_age until it is empty, then restore it."""

    async def run() -> None:
        js, name = t.js, t.names.stream
        cfg = (await js.stream_info(name)).config
        keep = cfg.max_age, cfg.duplicate_window
        cfg.max_age, cfg.duplicate_window = 1.0, 0.5
        await js.update_stream(cfg)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if (await js.stream_info(name)).state.messages == 0:
                break
        cfg.max_age, cfg.duplicate_window = keep
        await js.update_stream(cfg)

    t.ensure()
    t.run(run(), "ageing the stream", 30.0)


class TestNatsContract(TransportContract):
    @pytest.fixture(autouse=True)
    def _server(self, nats_server: NatsServer) -> None:
        self.server = nats_server

    def make_transport(self, tmp_path: Path, partitions: int) -> Transport:
        return make(self.server, tmp_path, partitions)

    def age_out(self, transport: Transport) -> None:
        assert isinstance(transport, NatsTransport)
        age_out(transport)


# ---- what only the NATS backend promises -----------------------------------------------


@pytest.fixture
def nats(nats_server: NatsServer) -> NatsServer:
    return nats_server


def stream_records(t: NatsTransport) -> list[tuple[int, str, bytes]]:
    """Every message in the stream: (sequence, subject, payload), control messages included."""

    async def read() -> list[tuple[int, str, bytes]]:
        si = await t.js.stream_info(t.names.stream)
        out: list[tuple[int, str, bytes]] = []
        if not si.state.messages:
            return out
        for seq in range(int(si.state.first_seq), int(si.state.last_seq) + 1):
            m = await t.js.get_msg(t.names.stream, seq)
            out.append((seq, m.subject or "", m.data or b""))
        return out

    t.ensure()
    result: list[tuple[int, str, bytes]] = t.run(read(), "reading the stream", 60.0)
    return result


def values(t: NatsTransport) -> list[bytes]:
    return [data for _, subject, data in stream_records(t) if not subject.endswith(".ctl")]


def test_layout_subjects_headers_and_offsets(nats: NatsServer, tmp_path: Path) -> None:
    t = make(nats, tmp_path, 3)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(6)], {"n": 6})
    prod.publish([], {"n": 7})  # a checkpoint alone: a control message
    prod.publish([Record("odd schema.tä ble", b'{"id":1}', b"x")], {"n": 8})
    name = pipeline_name(tmp_path)
    msgs = stream_records(t)
    assert [s for s, _, _ in msgs] == list(range(1, 9))
    subjects = [subject for _, subject, _ in msgs]
    for (_, subject, data), i in zip(msgs[:6], range(6), strict=True):
        p = partition_for(rec(i, "").key, 3)
        assert subject == f"syncline.{name}.{p}.public.orders" and data == str(i).encode()
    assert subjects[6] == f"syncline.{name}.ctl"
    odd = partition_for(b'{"id":1}', 3)
    assert subjects[7] == f"syncline.{name}.{odd}.odd_schema.t__ble"
    cons = t.consumer("g")
    got = drain(cons, 7)
    assert {r.table for r in got} == {TABLE, "odd schema.tä ble"}
    assert sorted(r.offset for r in got) == [1, 2, 3, 4, 5, 6, 8]  # stream sequences
    assert t.end_offsets() == {
        p: max(r.offset for r in got if r.partition == p) + 1 for p in range(3)
    }
    assert t.check()[0].startswith(f"NATS stream syncline_{name} at nats://")
    t.close()


def test_batch_cut_short_by_a_crash_is_not_published_twice(
    nats: NatsServer, tmp_path: Path
) -> None:
    t = make(nats, tmp_path, 4)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(100)], {"n": 100})
    # The process dies while sending the next batch: 37 of its 200 records made it.
    batch = [rec(i, str(i)) for i in range(100, 300)]
    st = prod._get_state()
    msgs, _ = prod._build(st, batch, {"n": 300}, None)
    t.run(prod._send(st.last_seq, msgs[:37]), "sending a prefix")
    again = make(nats, tmp_path, 4)
    prod2 = again.producer()
    assert prod2.checkpoint() == {"n": 100}  # the batch's checkpoint never landed
    assert len(prod2._get_state().pending) == 37
    # The source resends from n=100, in other batch sizes than before.
    prod2.publish(batch[:20], {"n": 120})  # all already stored: only the checkpoint moves
    assert prod2.checkpoint() == {"n": 120}
    again.close()
    third = make(nats, tmp_path, 4)  # and a crash right here is recovered exactly too
    prod3 = third.producer()
    assert prod3.checkpoint() == {"n": 120} and len(prod3._get_state().pending) == 17
    prod3.publish(batch[20:150], {"n": 250})
    prod3.publish(batch[150:], {"n": 300})
    assert sorted(int(v) for v in values(third)) == list(range(300))  # each record once
    got = drain(third.consumer("g"), 300)
    assert sorted(int(r.value) for r in got) == list(range(300))
    third.close()
    t.close()


def test_resent_records_that_differ_are_published_again(nats: NatsServer, tmp_path: Path) -> None:
    """A source that does not resend the same records (a re-snapshot) loses nothing."""
    t = make(nats, tmp_path, 2)
    prod = t.producer()
    st = prod._get_state()
    msgs, _ = prod._build(st, [rec(i, f"a{i}") for i in range(10)], {"n": 10}, None)
    t.run(prod._send(st.last_seq, msgs[:5]), "sending a prefix")
    prod2 = make(nats, tmp_path, 2).producer()
    prod2.publish(
        [rec(i, f"a{i}") for i in range(3)] + [rec(i, f"b{i}") for i in range(3, 10)], {"n": 10}
    )
    assert values(t) == [f"a{i}".encode() for i in range(5)] + [
        f"b{i}".encode() for i in range(3, 10)
    ]
    t.close()


def test_failed_message_mid_batch_fails_every_later_one(nats: NatsServer, tmp_path: Path) -> None:
    t = make(nats, tmp_path, 2)
    prod = t.producer()
    st = prod._get_state()
    msgs, _ = prod._build(st, [rec(i, str(i)) for i in range(50)], {"n": 50}, None)
    msgs[20] = ("elsewhere.not.in.the.stream", msgs[20][1], msgs[20][2])  # never stored
    with pytest.raises(TransportError, match="refused a batch"):
        t.run(prod._send(st.last_seq, msgs), "sending")
    assert values(t) == [str(i).encode() for i in range(20)]  # a prefix, no gap
    prod._state = None
    prod.publish([rec(i, str(i)) for i in range(50)], {"n": 50})  # the retry completes it
    assert values(t) == [str(i).encode() for i in range(50)]
    t.close()


def test_second_producer_fences_the_first(nats: NatsServer, tmp_path: Path) -> None:
    t = make(nats, tmp_path, 2)
    zombie = t.producer()
    zombie.publish([rec(i, f"z{i}") for i in range(10)], {"n": 10})
    other = make(nats, tmp_path, 2)
    live = other.producer()
    live.publish([rec(i, f"l{i}") for i in range(10, 20)], {"n": 20})
    with pytest.raises(TransportError, match="another producer"):
        zombie.publish([rec(i, f"z{i}") for i in range(10, 30)], {"n": 30})
    assert zombie.checkpoint() == {"n": 20}  # re-read: it sees who wrote last
    live.publish([rec(i, f"l{i}") for i in range(20, 25)], {"n": 25})
    vals = values(t)
    assert vals == [f"z{i}".encode() for i in range(10)] + [f"l{i}".encode() for i in range(10, 25)]
    other.close()
    t.close()


def test_record_over_max_payload_is_one_clear_error(nats: NatsServer, tmp_path: Path) -> None:
    t = make(nats, tmp_path, 2)
    prod = t.producer()
    with pytest.raises(PermanentError) as err:
        prod.publish([rec(1, "small"), rec(2, os.urandom(9 * 1024 * 1024))], {"n": 2})
    msg = str(err.value)
    assert "over the NATS server's max_payload of 8.4 MB" in msg and "\n" not in msg
    assert values(t) == []
    t.close()


def test_records_deleted_before_they_were_applied_are_reported(
    nats: NatsServer, tmp_path: Path
) -> None:
    t = make(nats, tmp_path, 1)
    prod = t.producer()
    prod.publish([rec(i, str(i)) for i in range(20)], {"n": 20})
    applied = drain(t.consumer("sink"), 20)[:5]  # the sink applied five, then stopped
    age_out(t)
    prod.publish([rec(i, str(i)) for i in range(20, 25)], {"n": 25})
    cons = t.consumer("sink")
    cons.seek(next_positions(applied))
    with pytest.raises(StorageError, match=r"partition 0: records from offset 6 to 20 are gone"):
        drain(cons, 5)
    t.close()


def test_partition_count_and_foreign_streams_are_refused(nats: NatsServer, tmp_path: Path) -> None:
    make(nats, tmp_path, 4).producer()
    with pytest.raises(ConfigError) as err:
        make(nats, tmp_path, 8).producer()
    assert "has 4 partitions but transport.partitions is 8" in str(err.value)
    with pytest.raises(ConfigError, match="is not pipeline"):
        make(nats, tmp_path / "x", 4, stream=f"syncline_{pipeline_name(tmp_path)}").producer()


def test_unreachable_server_is_a_transient_one_line_error(tmp_path: Path) -> None:
    cfg = NatsTransportConfig.model_validate(
        {"kind": "nats", "servers": ["nats://u:hunter2@127.0.0.1:1"], "connect_timeout": 0.5}
    )
    t = NatsTransport(cfg, "down")
    with pytest.raises(TransportError) as err:
        t.producer()
    assert str(err.value).startswith("cannot connect to NATS at nats://127.0.0.1:1 (")
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)
    t.close()


def test_config_is_validated_in_one_line() -> None:
    def error(transport: str) -> str:
        with pytest.raises(ConfigError) as err:
            parse_config(
                yaml.safe_load(
                    f"""
pipelines:
  - name: p
    source: {{kind: sqlite, path: a.db, tables: [t]}}
    transport: {transport}
    sink: {{kind: sqlite, path: b.db}}
"""
                )
            )
        assert "\n" not in str(err.value)
        return str(err.value)

    assert error("{kind: nats, servers: ['http://x:1']}") == (
        "config: pipelines[0].transport.servers: 'http://x:1' is not a NATS server URL "
        "(expected nats://host:port, tls://, ws:// or wss://)"
    )
    assert "hunter2" not in error("{kind: nats, servers: ['nats://u:hunter2@x:notaport']}")
    assert error("{kind: nats, user: u}").endswith("user and password go together")
    assert error("{kind: nats, partitions: 0}").startswith(
        "config: pipelines[0].transport.partitions:"
    )
    cfg = parse_config(
        yaml.safe_load(
            "pipelines: [{name: p, source: {kind: sqlite, path: a, tables: [t]},"
            " transport: {kind: nats, password: hunter2, user: u}, sink: {kind: sqlite, path: b}}]"
        )
    )
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.pipelines[0].transport)


CHILD = textwrap.dedent(
    """
    import sys
    from syncline.config import NatsTransportConfig
    from syncline.events import encode_key
    from syncline.transports.base import Record
    from syncline.transports.nats import NatsTransport

    cfg = NatsTransportConfig(kind="nats", servers=sys.argv[1].split(","), publish_in_flight=64)
    prod = NatsTransport(cfg, sys.argv[2]).producer()
    n = (prod.checkpoint() or {"n": 0})["n"]
    while True:
        batch = [Record("public.t", encode_key({"id": i % 97}), str(i).encode()) for i in range(n, n + 2000)]
        prod.publish(batch, {"n": n + 2000})
        n += 2000
        print(n, flush=True)
    """
)


def test_producer_killed_mid_batch_publishes_every_record_once(
    nats: NatsServer, tmp_path: Path
) -> None:
    name = pipeline_name(tmp_path)
    cut_short = 0
    for round_ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, nats.url, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stderr is not None
        for _ in range(1 + round_ % 3):
            assert child.stdout.readline(), child.stderr.read()
        time.sleep(0.013 * round_)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
        child.stderr.close()
        t = make(nats, tmp_path, 4)
        cut_short += bool(t.producer()._get_state().pending)
        t.close()
    assert cut_short  # some kill landed inside a batch (the case this test is about)
    t = make(nats, tmp_path, 4)
    prod = t.producer()
    checkpoint = prod.checkpoint()
    assert checkpoint is not None
    stored = sorted(int(v) for v in values(t))
    n = checkpoint["n"]
    assert stored[:n] == list(range(n))  # everything up to the checkpoint, once ...
    assert stored[n:] == list(range(n, n + len(stored) - n))  # ... then a prefix of the next batch
    t.close()


def test_credentials_refused_is_one_line_without_the_password(tmp_path: Path) -> None:
    server = start_nats(env_var=None, auth=("syncline", "right-secret"))
    try:
        bad = make(server, tmp_path, 2, user="syncline", password="wrong-secret", connect_timeout=1)
        with pytest.raises(AuthError) as err:
            bad.producer()
        msg = str(err.value)
        assert msg.startswith(f"NATS at {server.url} refused the credentials")
        assert "secret" not in msg and "\n" not in msg
        bad.close()
        good = make(server, tmp_path, 2, user="syncline", password="right-secret")
        good.producer().publish([rec(1, "a")], {"n": 1})
        assert [r.value for r in drain(good.consumer("g"), 1)] == [b"a"]
        good.close()
    finally:
        server.stop()


def test_server_restart_is_transient_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_producer, "REQUEST_TIMEOUT_S", 2.0)
    server = start_nats(env_var=None)
    try:
        t = make(server, tmp_path, 2)
        prod = t.producer()
        prod.publish([rec(i, str(i)) for i in range(100)], {"n": 100})
        server.nodes[0].kill9()
        with pytest.raises(TransportError):
            prod.publish([rec(i, str(i)) for i in range(100, 200)], {"n": 200})
        server.nodes[0].start()  # same port and store: the client reconnects by itself
        deadline = time.monotonic() + 30
        while True:  # what the pipeline does: retry until the log answers again
            try:
                # The client may have sent the batch it held while disconnected once it
                # was back: then it is stored whole, checkpoint included (the chain holds).
                if prod.checkpoint() == {"n": 100}:
                    prod.publish([rec(i, str(i)) for i in range(100, 200)], {"n": 200})
                assert prod.checkpoint() == {"n": 200}
                break
            except TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        got = drain(t.consumer("g"), 200)
        assert sorted(int(r.value) for r in got) == list(range(200))
        t.close()
    finally:
        server.stop()
