"""The NATS producer: pipelined appends chained by optimistic concurrency, exact recovery.

The first message of a publish carries ``Nats-Expected-Last-Sequence`` (the
sequence the stream must end at) and every later one
``Nats-Expected-Last-Msg-Id`` (the id of the message just before it, which
contains its sequence). So the messages of a batch can be sent without waiting
for each other: each one is stored only if everything before it was stored, in
place, by us. A message that fails makes every later one fail too (no gap that
would reorder a key), and a second writer (a zombie producer) breaks the chain
and is refused. Only every ``publish_in_flight // 4``-th message and the last
ask for an acknowledgement: the acknowledgement of one message vouches for all
before it.

The source checkpoint travels in a header of the batch's last message (or of a
small control message on ``syncline.<pipeline>.ctl`` for a publish without
records), so it is stored if and only if the whole batch is. After a crash the
stream can hold a *prefix* of a batch whose checkpoint never landed. On open the
producer finds the newest checkpoint, reads the records after it and, as the
source re-sends the same changes from that checkpoint, drops each one whose
content matches the next stored one (a digest of table, key and value without
the read timestamps). The first mismatch ends the matching: everything from
there on is published, so the worst case is a record twice, never a lost one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zlib import crc32

import msgspec
import nats.js.errors

from syncline.errors import PermanentError, SynclineError, TransportError
from syncline.transports.base import Checkpoint, Producer, Record
from syncline.transports.nats_io import (
    H_CHECKPOINT,
    H_COVERS,
    H_EXPECT_ID,
    H_EXPECT_SEQ,
    H_MSG_ID,
    H_PREV,
    H_TABLE,
    REQUEST_TIMEOUT_S,
    decode_key,
    digest,
    encode_key,
    flat,
    log,
    write,
)

if TYPE_CHECKING:
    from syncline.transports.nats import NatsTransport

KV_PRODUCER = "producer"  # fallback copy of the newest checkpoint (see _recover)
KV_EVERY_S = 5.0
SCAN_WINDOW = 128  # messages read per round trip while looking for the newest checkpoint
SCAN_LIMIT = 1_000_000
CHUNK_BYTES = 256 * 1024  # protocol bytes handed to the client at once
HEADER_ALLOWANCE = 512  # bytes of subject and headers next to a record's key and value

_json = msgspec.json.Encoder()
_decode_json = msgspec.json.Decoder(dict).decode


def encode_checkpoint(ckpt: Checkpoint) -> str:
    raw = _json.encode(ckpt)
    if raw.isascii():
        return raw.decode()
    return "b64:" + base64.b64encode(raw).decode()


def decode_checkpoint(text: str) -> Checkpoint:
    raw = base64.b64decode(text[4:]) if text.startswith("b64:") else text.encode()
    out: Checkpoint = _decode_json(raw)
    return out


@dataclass
class _State:
    """What the producer knows about the stream; rebuilt from the stream after any error."""

    last_seq: int  # the stream's newest sequence (written by us)
    prev: list[int]  # newest record sequence per partition
    checkpoint: Checkpoint | None
    covered: int  # sequence of the newest record the checkpoint covers
    marker: int  # sequence of the message that stored the checkpoint
    pending: deque[tuple[int, str]] = field(default_factory=deque)  # (seq, digest) to match


class _Acks:
    """Publish acknowledgements on one inbox (nats-py's publish_async loses API errors)."""

    def __init__(self, inbox: str) -> None:
        self.prefix = inbox + "."
        self._n = 0
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.sub: Any = None

    async def subscribe(self, nc: Any) -> None:
        self.sub = await nc.subscribe(self.prefix + "*", cb=self._on_reply)

    def expect(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        self._n += 1
        token = str(self._n)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[token] = fut
        return self.prefix + token, fut

    def forget(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        for token, f in list(self._futures.items()):
            if f is fut:
                del self._futures[token]
        fut.cancel()

    async def _on_reply(self, msg: Any) -> None:
        fut = self._futures.pop(msg.subject[len(self.prefix) :], None)
        if fut is None or fut.done():
            return
        status = (msg.headers or {}).get("Status")
        if status == "503":
            fut.set_result({"error": {"description": "no stream takes this subject"}})
            return
        try:
            fut.set_result(_decode_json(msg.data))
        except msgspec.DecodeError:
            fut.set_result({"error": {"description": f"unreadable acknowledgement {msg.data!r}"}})


class NatsProducer(Producer):
    def __init__(self, transport: NatsTransport) -> None:
        self._t = transport
        self._names = transport.names
        self._n = transport.partitions
        self._in_flight = transport.config.publish_in_flight
        self._subjects: dict[tuple[int, str], tuple[str, str | None]] = {}
        self._kv_at = time.monotonic()
        self._kv_dirty = False
        self._closed = False
        self._ack_inbox: _Acks | None = None
        self._state: _State | None = self._recover()

    # ---- recovery --------------------------------------------------------------------

    def _recover(self) -> _State:
        st: _State = self._t.run(self._recover_async(), "reading the producer state", 120.0)
        if st.pending:
            log.info(
                "NATS stream %s: %d records after the last checkpoint (a batch cut short); "
                "they will not be published again",
                self._names.stream,
                len(st.pending),
            )
        return st

    async def _recover_async(self) -> _State:
        js, stream = self._t.js, self._names.stream
        si = await js.stream_info(stream)
        last, first = int(si.state.last_seq), int(si.state.first_seq)
        fallback = await self._kv_checkpoint(last)
        floor = max(first, fallback[2] + 1 if fallback else 1)
        msgs: dict[int, Any] = {}
        marker = 0
        hi = last
        while hi >= floor and not marker and last - hi < SCAN_LIMIT:
            lo = max(floor, hi - SCAN_WINDOW + 1)
            got = await self._read(range(lo, hi + 1))
            msgs.update(got)
            for seq in sorted(got, reverse=True):
                got[seq].headers = flat(got[seq].headers)
                if H_CHECKPOINT in got[seq].headers:
                    marker = seq
                    break
            hi = lo - 1
        if marker:
            hdrs = msgs[marker].headers
            checkpoint: Checkpoint | None = decode_checkpoint(hdrs[H_CHECKPOINT])
            covered = int(hdrs.get(H_COVERS, marker))
        elif fallback is not None:
            checkpoint, covered, marker = fallback
        else:
            if last - hi >= SCAN_LIMIT:
                log.warning("NATS stream %s: no checkpoint in the newest records", stream)
            checkpoint, covered = None, (last if last - hi >= SCAN_LIMIT else 0)
        missing = [s for s in range(max(covered + 1, first), last + 1) if s not in msgs]
        for seq, m in (await self._read(missing)).items():
            m.headers = flat(m.headers)
            msgs[seq] = m
        pending: deque[tuple[int, str]] = deque()
        for seq in sorted(s for s in msgs if s > covered):
            m = msgs[seq]
            if m.subject == self._names.ctl:
                continue
            hdrs = m.headers
            table = self._names.table_of(m.subject, hdrs)
            pending.append((seq, digest(table, decode_key(hdrs), m.data or b"")))
        prev = await self._t.last_seqs()
        return _State(
            last_seq=last,
            prev=[prev[p] for p in range(self._n)],
            checkpoint=checkpoint,
            covered=covered,
            marker=marker,
            pending=pending,
        )

    async def _read(self, seqs: Sequence[int]) -> dict[int, Any]:
        """The messages at ``seqs`` (deleted ones left out), a window at a time, from the leader."""
        js, stream = self._t.js, self._names.stream
        out: dict[int, Any] = {}

        async def one(seq: int) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                out[seq] = await js.get_msg(stream, seq)

        for i in range(0, len(seqs), SCAN_WINDOW):
            await asyncio.gather(*(one(s) for s in seqs[i : i + SCAN_WINDOW]))
        return out

    async def _kv_checkpoint(self, last: int) -> tuple[Checkpoint, int, int] | None:
        try:
            entry = await self._t.kv.get(KV_PRODUCER)
        except nats.js.errors.KeyNotFoundError:
            return None
        data = _decode_json(entry.value or b"{}")
        if not data or int(data["marker"]) > last:  # not this stream's (it was recreated)
            return None
        return data["checkpoint"], int(data["covers"]), int(data["marker"])

    def _get_state(self) -> _State:
        if self._closed:
            raise TransportError("NATS producer is closed")
        if self._state is None:
            self._state = self._recover()
        return self._state

    # ---- Producer --------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        ckpt = self._get_state().checkpoint
        return None if ckpt is None else dict(ckpt)

    def publish(self, records: Sequence[Record], checkpoint: Checkpoint) -> None:
        st = self._get_state()
        skip = 0
        matched: int | None = None
        while st.pending and skip < len(records):
            r = records[skip]
            seq, want = st.pending[0]
            if digest(r.table, r.key, r.value) != want:
                log.warning(
                    "NATS stream %s: the source re-sent different records than the %d stored "
                    "after the last checkpoint; publishing them again (they may arrive twice)",
                    self._names.stream,
                    len(st.pending),
                )
                st.pending.clear()
                break
            st.pending.popleft()
            matched = seq
            skip += 1
        todo = records[skip:] if skip else records
        self._check_sizes(todo)
        if not todo:
            covers = st.covered if matched is None else matched
            if checkpoint == st.checkpoint and covers == st.covered:
                return
        msgs, prev = self._build(st, todo, checkpoint, matched)
        try:
            self._t.run(
                self._send(st.last_seq, msgs),
                "publishing records",
                REQUEST_TIMEOUT_S * 3 + len(msgs) / 1000.0,
            )
        except SynclineError:
            self._state = None  # unknown how much landed: re-read it before the next call
            raise
        st.last_seq += len(msgs)
        st.prev = prev
        st.checkpoint = dict(checkpoint)
        st.marker = st.last_seq
        st.covered = st.last_seq if todo else (st.covered if matched is None else matched)
        self._kv_dirty = True
        if time.monotonic() - self._kv_at >= KV_EVERY_S:
            self._save_kv(st)

    def _check_sizes(self, records: Sequence[Record]) -> None:
        limit = self._t.nc.max_payload
        for r in records:
            size = len(r.value) + 2 * len(r.key) + len(r.table) + HEADER_ALLOWANCE
            if size > limit:
                raise PermanentError(
                    f"a {r.table} record of {size / 1e6:.1f} MB is over the NATS server's "
                    f"max_payload of {limit / 1e6:.1f} MB; raise max_payload in the "
                    "nats-server configuration (it allows up to 64 MB)"
                )

    def _build(
        self,
        st: _State,
        records: Sequence[Record],
        checkpoint: Checkpoint,
        matched: int | None,
    ) -> tuple[list[tuple[str, bytes, str]], list[int]]:
        """The messages of one publish (subject, payload, header lines); the new partition tails."""
        n = self._n
        prev = list(st.prev)
        subjects = self._subjects
        names = self._names
        seq = st.last_seq
        last_id = ""
        out: list[tuple[str, bytes, str]] = []
        for r in records:
            p = crc32(r.key) % n if n > 1 else 0  # partition_for, inlined
            subj = subjects.get((p, r.table))
            if subj is None:
                subj = subjects[(p, r.table)] = names.subject(p, r.table)
            seq += 1
            msg_id = f"{seq}-{digest(r.table, r.key, r.value)}"
            kname, kval = encode_key(r.key)
            # The first message names the sequence the stream must end at; each later
            # one the id of the message before it (which holds its sequence).
            expect = f"{H_EXPECT_ID}: {last_id}" if last_id else f"{H_EXPECT_SEQ}: {seq - 1}"
            hdrs = f"{H_MSG_ID}: {msg_id}\r\n{expect}\r\n{kname}: {kval}\r\n{H_PREV}: {prev[p]}\r\n"
            if subj[1] is not None:
                hdrs += f"{H_TABLE}: {subj[1]}\r\n"
            out.append((subj[0], r.value, hdrs))
            prev[p] = seq
            last_id = msg_id
        ckpt = encode_checkpoint(checkpoint)
        if out:
            subject, payload, hdrs = out[-1]
            out[-1] = (subject, payload, f"{hdrs}{H_CHECKPOINT}: {ckpt}\r\n")
        else:
            covers = st.covered if matched is None else matched
            seq += 1
            out.append(
                (
                    names.ctl,
                    b"",
                    f"{H_MSG_ID}: {seq}-ctl\r\n{H_EXPECT_SEQ}: {seq - 1}\r\n"
                    f"{H_CHECKPOINT}: {ckpt}\r\n{H_COVERS}: {covers}\r\n",
                )
            )
        return out, prev

    async def _send(self, base: int, msgs: list[tuple[str, bytes, str]]) -> None:
        """Pipeline ``msgs``; at most ``publish_in_flight`` of them unconfirmed at any time.

        The protocol lines are written straight into the client's buffer, many at a
        time: nats-py's ``publish`` validates and re-encodes the headers of every
        message, which made it most of a publish's CPU time.
        """
        nc = self._t.nc
        acks = await self._acks()
        every = max(1, self._in_flight // 4)
        waiting: deque[tuple[int, asyncio.Future[dict[str, Any]]]] = deque()
        confirmed = -1
        last = len(msgs) - 1
        chunk: list[bytes] = []
        size = 0
        try:
            for j, (subject, payload, hdrs) in enumerate(msgs):
                hdr = b"NATS/1.0\r\n" + hdrs.encode() + b"\r\n"
                reply = ""
                if j == last or j % every == every - 1:
                    reply, fut = acks.expect()
                    waiting.append((j, fut))
                hlen = len(hdr)
                chunk += (
                    f"HPUB {subject} {reply} {hlen} {hlen + len(payload)}\r\n".encode(),
                    hdr,
                    payload,
                    b"\r\n",
                )
                size += hlen + len(payload)
                if reply or size >= CHUNK_BYTES:
                    await write(nc, b"".join(chunk))
                    chunk.clear()
                    size = 0
                while waiting and (j - confirmed >= self._in_flight or j == last):
                    idx, fut = waiting.popleft()
                    await self._confirm(fut, base + idx + 1)
                    confirmed = idx
        finally:
            for _, fut in waiting:
                acks.forget(fut)

    async def _acks(self) -> _Acks:
        if self._ack_inbox is None:
            self._ack_inbox = _Acks(self._t.nc.new_inbox())
            await self._ack_inbox.subscribe(self._t.nc)
        return self._ack_inbox

    async def _confirm(self, fut: asyncio.Future[dict[str, Any]], seq: int) -> None:
        stream = self._names.stream
        try:
            ack = await asyncio.wait_for(fut, REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise TransportError(
                f"NATS stream {stream} did not acknowledge record {seq} within "
                f"{REQUEST_TIMEOUT_S:.0f} s"
            ) from None
        error = ack.get("error")
        if error is not None:
            desc = f"{error.get('description', error)} (error {error.get('err_code', '?')})"
            raise TransportError(
                f"NATS stream {stream} refused a batch at sequence {seq} ({desc}): the "
                "connection dropped mid-batch or another producer writes to the stream (is "
                f"pipeline {self._names.pipeline} running twice?); re-reading the stream"
            )
        if ack.get("seq") != seq or ack.get("duplicate"):
            raise TransportError(
                f"NATS stream {stream} stored record {seq} at sequence {ack.get('seq')}"
                f"{' as a duplicate' if ack.get('duplicate') else ''}; re-reading the stream"
            )

    def _save_kv(self, st: _State) -> None:
        """Keep a copy of the checkpoint that outlives the message holding it (max_age)."""
        if st.checkpoint is None or not self._kv_dirty:
            return
        data = _json.encode(
            {"checkpoint": st.checkpoint, "covers": st.covered, "marker": st.marker}
        )
        try:
            self._t.run(self._t.kv.put(KV_PRODUCER, data), "saving the checkpoint copy", 5.0)
            self._kv_dirty = False
        except SynclineError as exc:
            log.debug("NATS: checkpoint copy not saved: %s", exc)
        self._kv_at = time.monotonic()

    def close(self) -> None:
        if self._closed:
            return
        if self._state is not None:
            self._save_kv(self._state)
        self._closed = True
        if self._ack_inbox is not None and self._ack_inbox.sub is not None:
            try:
                self._t.run(self._ack_inbox.sub.unsubscribe(), "closing the producer", 5.0)
            except SynclineError as exc:
                log.debug("NATS producer close: %s", exc)
