"""The NATS consumer: one durable pull consumer per (group, partition), prefetching.

Each partition's durable consumer (``<group>_p<partition>``, filtered on
``syncline.<pipeline>.<partition>.>``, acknowledge-all) is (re)created at the
position to read from when the consumer starts and after every ``seek``: a
consumer left by a dead process would otherwise re-deliver its unacknowledged
messages after ``ack_wait``, behind newer ones. Without a seek a group resumes
after what it acknowledged, i.e. what ``commit`` reported.

The event loop keeps a pull request open per partition and tops it up as
``poll`` drains the buffer, so records are usually in memory before ``poll``
asks; the buffer is bounded in records and bytes, and the server stops
delivering to a group that is ``max_ack_pending`` records ahead of its commits.
Every record names the sequence of the previous record of its partition, so a
record missing in between (deleted by retention before it was applied) is
detected and reported instead of skipped.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from syncline.errors import StorageError, SynclineError, TransportError
from syncline.transports.base import Consumer, Delivered
from syncline.transports.nats_io import H_PREV, decode_key, flat, log

if TYPE_CHECKING:
    from syncline.transports.nats import NatsTransport

PREFETCH = 1000  # records asked for per partition (at most max_ack_pending)
BUFFER_BYTES = 1024 * 1024  # bytes per pull request, and no top-up while more are buffered
EXPIRES_S = 10.0  # a pull request's lifetime; an idle partition re-asks this often
LOST_AFTER_S = EXPIRES_S + 5.0  # no answer by then: the request was lost (server restart)
ACK_WAIT_S = 120.0
LINGER_S = 0.05  # wait for the rest of a batch on its way (within the poll's timeout)


class _Part:
    """One partition's consumer, pull state and buffer (touched by both threads)."""

    def __init__(self, partition: int, durable: str) -> None:
        self.p = partition
        self.durable = durable
        self.gen = 0
        self.sub: Subscription | None = None
        self.inbox = ""
        self.ready = False
        self.start: int | None = None  # explicit next offset from seek
        self.buf: deque[tuple[Delivered, str]] = deque()  # (record, ack subject)
        self.buf_bytes = 0
        self.outstanding = 0
        self.deadline = 0.0
        self.last = 0  # newest sequence accepted (later ones only; re-deliveries dropped)
        self.check_below: int | None = None  # the first record's predecessor must be below
        self.last_ours = -1  # newest accepted sequence that carried a predecessor link
        self.unacked: deque[tuple[int, str]] = deque()  # returned, not yet committed
        self.error: SynclineError | None = None
        self.more = False  # the server has more records for it than it delivered so far
        self.big = False  # the next record is larger than a pull request's byte budget


def _ack_info(reply: str) -> tuple[int, int]:
    """Stream sequence and records still pending, from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or with
    ``<domain>.<account hash>`` after ``ACK`` and a random token at the end.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    return int(tokens[7]), int(tokens[10])


class NatsConsumer(Consumer):
    def __init__(self, transport: NatsTransport, group: str, partitions: list[int]) -> None:
        self._t = transport
        self.group = group
        self.partitions = tuple(partitions)
        names = transport.names
        self._parts = {p: _Part(p, names.durable(group, p)) for p in partitions}
        self._cond = threading.Condition()
        self._rr = 0
        self._closed = False
        self._prefetch = max(1, min(PREFETCH, transport.config.max_ack_pending))
        self._big_bytes = transport.nc.max_payload + 65536

    # ---- positioning -----------------------------------------------------------------

    def seek(self, positions: Mapping[int, int]) -> None:
        with self._cond:
            for p, part in self._parts.items():
                if p in positions:
                    part.start = max(0, int(positions[p]))
                    part.ready = False

    async def _start(self, parts: list[_Part]) -> None:
        """(Re)create each partition's durable consumer at its position and start pulling."""
        js, nc = self._t.js, self._t.nc
        stream = self._t.names.stream
        for part in parts:
            with self._cond:
                part.gen += 1
                part.buf.clear()
                part.buf_bytes = 0
                part.outstanding = 0
                part.unacked.clear()
                part.error = None
            if part.sub is not None:
                await part.sub.unsubscribe()
                part.sub = None
            start, check = part.start, part.start
            try:
                info = await js.consumer_info(stream, part.durable)
            except nats.js.errors.NotFoundError:
                info = None
            if start is None:  # resume after what the group acknowledged
                floor = int(info.ack_floor.stream_seq or 0) if info and info.ack_floor else 0
                created_at = int(info.config.opt_start_seq or 1) if info else 1
                start = max(floor + 1, created_at)
                check = start if floor else None
            if info is not None:
                await js.delete_consumer(stream, part.durable)
            created = await js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=part.durable,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE
                    if start > 1
                    else DeliverPolicy.ALL,
                    opt_start_seq=start if start > 1 else None,
                    ack_policy=AckPolicy.ALL,
                    ack_wait=ACK_WAIT_S,
                    max_ack_pending=self._t.config.max_ack_pending,
                    filter_subject=self._t.names.partition_filter(part.p),
                    description=f"syncline group {self.group}, partition {part.p}",
                ),
            )
            gen = part.gen
            part.inbox = nc.new_inbox()
            part.sub = await nc.subscribe(part.inbox, cb=self._handler(part, gen))
            with self._cond:
                part.last = max(start, 1) - 1
                part.check_below = check if check and check > 0 else None
                part.last_ours = -1
                part.more = bool(created.num_pending)
                part.ready = True
        await self._top_up()

    # ---- the loop side ---------------------------------------------------------------

    def _handler(self, part: _Part, gen: int) -> Any:
        names = self._t.names

        async def on_msg(msg: Msg) -> None:
            if part.gen != gen:
                return
            hdrs = flat(msg.headers)
            status = hdrs.get("Status")
            if status is not None:
                await self._on_status(part, status, hdrs)
                return
            part.outstanding = max(0, part.outstanding - 1)
            try:
                seq, more = _ack_info(msg.reply)
            except (ValueError, IndexError):
                return
            part.more = more > 0
            part.big = False
            if seq <= part.last:
                return  # re-delivered after ack_wait: already handed out
            prev = int(hdrs.get(H_PREV, "-1"))
            gap = None
            if prev >= 0:
                if part.check_below is not None and prev >= part.check_below:
                    gap = (part.check_below, prev)
                elif part.check_below is None and part.last_ours >= 0 and prev != part.last_ours:
                    gap = (part.last_ours + 1, prev)
                part.check_below = None
                part.last_ours = seq
            rec = Delivered(
                part.p, seq, names.table_of(msg.subject, hdrs), decode_key(hdrs), msg.data
            )
            with self._cond:
                if gap is not None:
                    part.error = StorageError(
                        f"NATS stream {names.stream}, partition {part.p}: records from offset "
                        f"{gap[0]} to {gap[1]} are gone (deleted by retention, "
                        f"{self._t.config.retention_hours:g} h, or by hand) before group "
                        f"{self.group} applied them; the target misses those changes: "
                        "re-sync it"
                    )
                else:
                    part.buf.append((rec, msg.reply))
                    part.buf_bytes += len(msg.data)
                    part.last = seq
                self._cond.notify_all()

        return on_msg

    async def _on_status(self, part: _Part, status: str, hdrs: dict[str, str]) -> None:
        if status == "100":
            return  # idle heartbeat
        if status in ("404", "408"):
            part.more = False  # the request ran out: nothing is on its way
        pending = hdrs.get("Nats-Pending-Messages")
        part.outstanding = max(0, part.outstanding - int(pending)) if pending else 0
        desc = hdrs.get("Description", "")
        if status == "409" and "MaxBytes" in desc and not part.buf:
            part.big = True  # one request sized for the largest record the server takes
        if status == "409" and "Deleted" in desc:
            with self._cond:
                part.error = TransportError(
                    f"NATS consumer {part.durable} was deleted while group {self.group} read it"
                )
                self._cond.notify_all()
            return
        await self._top_up()

    async def _top_up(self) -> None:
        """Keep about ``PREFETCH`` records per partition asked for or buffered."""
        nc = self._t.nc
        stream = self._t.names.stream
        now = time.monotonic()
        for part in self._parts.values():
            if not part.ready or part.error is not None or part.sub is None:
                continue
            if part.outstanding and now > part.deadline:
                part.outstanding = 0  # never answered: lost with a server or leader
            room = self._prefetch - len(part.buf) - part.outstanding
            if part.buf_bytes >= BUFFER_BYTES or room <= 0:
                continue
            if room < self._prefetch // 2 and part.outstanding:
                continue
            req = {
                "batch": room,
                "expires": int(EXPIRES_S * 1e9),
                "max_bytes": self._big_bytes if part.big else BUFFER_BYTES,
            }
            try:
                await nc.publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{part.durable}",
                    json.dumps(req).encode(),
                    reply=part.inbox,
                )
            except Exception as exc:  # disconnected: the watchdog asks again later
                log.debug("NATS pull request failed: %s", exc)
                continue
            part.outstanding += room
            part.deadline = now + LOST_AFTER_S

    def _kick(self) -> None:
        asyncio.run_coroutine_threadsafe(self._top_up(), self._t.loop.loop)

    # ---- Consumer --------------------------------------------------------------------

    def _take(self, max_records: int) -> list[Delivered]:
        """Share ``max_records`` fairly across partitions (called with the lock held)."""
        parts = [self._parts[p] for p in self.partitions]
        k = len(parts)
        self._rr = (self._rr + 1) % k
        todo = [parts[(self._rr + i) % k] for i in range(k)]
        out: list[Delivered] = []
        while todo and len(out) < max_records:
            share = max(1, -(-(max_records - len(out)) // len(todo)))
            busy = []
            for part in todo:
                n = min(share, max_records - len(out), len(part.buf))
                for _ in range(n):
                    rec, reply = part.buf.popleft()
                    part.buf_bytes -= len(rec.value)
                    part.unacked.append((rec.offset, reply))
                    out.append(rec)
                if part.buf:
                    busy.append(part)
            todo = busy
        return out

    def poll(self, max_records: int, timeout: float) -> list[Delivered]:
        if self._closed:
            raise TransportError("NATS consumer is closed")
        with self._cond:
            starting = [p for p in self._parts.values() if not p.ready]
        if starting:
            self._t.run(self._start(starting), f"starting consumer group {self.group}", 60.0)
        if max_records <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        kicked = time.monotonic()
        out: list[Delivered] = []
        while True:
            with self._cond:
                for part in self._parts.values():
                    if part.error is not None and not part.buf:
                        if out:
                            return out
                        raise part.error
                out += self._take(max_records - len(out))
                remaining = deadline - time.monotonic()
                # Records are streaming in (the server said more are pending): wait for
                # them a little, so a poll returns a full batch, not the first few.
                coming = any(p.more and p.outstanding and not p.buf for p in self._parts.values())
                if remaining > 0 and (not out or (coming and len(out) < max_records)):
                    before = sum(len(p.buf) for p in self._parts.values())
                    self._cond.wait(min(remaining, LINGER_S if out else 1.0))
                    arrived = sum(len(p.buf) for p in self._parts.values()) > before
                    if out and not arrived:
                        remaining = 0.0
                else:
                    remaining = 0.0
            now = time.monotonic()
            if out or now - kicked >= 1.0:
                self._kick()
                kicked = now
            if len(out) >= max_records or remaining <= 0 or now >= deadline:
                return out

    def commit(self, positions: Mapping[int, int]) -> None:
        acks: list[str] = []
        with self._cond:
            for p, pos in positions.items():
                part = self._parts.get(p)
                if part is None:
                    continue
                reply = None
                while part.unacked and part.unacked[0][0] < pos:
                    reply = part.unacked.popleft()[1]
                if reply is not None:
                    acks.append(reply)
        if not acks:
            return
        nc = self._t.nc

        async def ack() -> None:
            # Acknowledge-all: the newest record covers the ones before. Confirmed, so a
            # consumer of the group started right after resumes from here.
            await asyncio.gather(*(nc.request(reply, b"+ACK", timeout=5.0) for reply in acks))

        self._t.run(ack(), f"committing offsets of group {self.group}", 10.0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        subs = [p.sub for p in self._parts.values() if p.sub is not None]
        for part in self._parts.values():
            part.sub = None
            part.gen += 1

        async def unsubscribe() -> None:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception as exc:
                    log.debug("NATS unsubscribe: %s", exc)

        if subs:
            try:
                self._t.run(unsubscribe(), "closing the consumer", 5.0)
            except SynclineError as exc:
                log.debug("NATS consumer close: %s", exc)
