"""Kafka transport throughput: publish (one transaction per call) and poll, records/s.

Needs a broker: SYNCLINE_KAFKA_BOOTSTRAP=host:port, or SYNCLINE_KAFKA_LOCAL=kafka|tansu to
start one with scripts/kafka-local.sh. Prints figures; asserts nothing.

Usage: python bench/kafka_transport.py [--records 200000] [--batch 5000] [--size 250]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from servers import KAFKA_HOW, start_kafka  # noqa: E402
from syncline.config import KafkaTransportConfig  # noqa: E402
from syncline.events import encode_key  # noqa: E402
from syncline.transports.base import Record  # noqa: E402
from syncline.transports.kafka import KafkaTransport  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    broker = start_kafka()
    if broker is None:
        sys.exit(KAFKA_HOW)
    try:
        cfg = KafkaTransportConfig(
            kind="kafka",
            bootstrap_servers=broker.bootstrap,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
            partitions=args.partitions,
        )
        t = KafkaTransport(cfg, "bench")
        prod = t.producer()
        value = os.urandom(args.size // 2).hex().encode()
        batches = [
            [Record("public.bench", encode_key({"id": i}), value) for i in range(s, s + args.batch)]
            for s in range(0, args.records, args.batch)
        ]
        prod.publish(batches[0][:1], {"n": 0})  # creates the topic outside the timing
        lat = []
        start = time.perf_counter()
        for n, batch in enumerate(batches):
            t0 = time.perf_counter()
            prod.publish(batch, {"n": n})
            lat.append(time.perf_counter() - t0)
        pub = time.perf_counter() - start
        cons = t.consumer("bench")
        got = 0
        start = time.perf_counter()
        while got < args.records + 1:
            got += len(cons.poll(args.batch, 1.0))
        read = time.perf_counter() - start
        start = time.perf_counter()
        ends = t.end_offsets()
        end_s = time.perf_counter() - start
        print(f"broker: {broker.version} at {broker.bootstrap}")
        print(
            f"publish: {args.records / pub:,.0f} records/s ({args.batch} per transaction, "
            f"{args.size} B values); p50 {statistics.median(lat) * 1000:.1f} ms per publish"
        )
        print(f"poll:    {args.records / read:,.0f} records/s")
        print(f"end_offsets over {len(ends)} streams: {end_s * 1000:.0f} ms")
        t.close()
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
