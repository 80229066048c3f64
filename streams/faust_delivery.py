"""Faust's aiokafka transport with a cheaper hand-over from consumer to stream.

Used by `streams.app` (through `RectuneFaustApp`); thin Faust plumbing, no
aggregation logic.

Why: Faust's consumer hands every fetched message to the conductor as
``wait_first(callback(message), suspend_flow.wait())``, so that a flow
suspension (a rebalance) can abandon a delivery stuck on a full stream buffer.
`wait_first` wraps four awaitables in tasks (the delivery, the suspension, the
service's stopped and crashed events), runs `asyncio.wait` and cancels the
losers: per message.  On 100-event envelopes that race was the largest single
cost of the Faust engine (bench/pipeline.py, one worker, 2M events: 10.2-10.7
CPU-s with it, 7.1-7.7 without; see BENCHMARKS.md).

`DeliveryConsumer._drain_messages` replaces Faust's drain loop: while the flow
runs it awaits the delivery inline (the conductor then puts the event into the
stream's buffer without suspending, unless that buffer is full); while the flow
is suspended it keeps Faust's race, so a rebalance still cannot wedge the loop.
A delivery that blocks on a full buffer while a rebalance starts finishes late
instead of being abandoned; the processor (`streams.processor`) already
tolerates such stale messages: a revoked partition's message is dropped, and
after a re-assignment it skips offsets its state holds and seeks back over a
gap before its resume offset.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

#: Messages handed over between two yields to the event loop: a fetched batch
#: is otherwise delivered without a pause, starving the stream and the timers.
YIELD_EVERY = 100


class DeliveryConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering inline while the flow is not suspended."""

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's Fetcher service runs this as its one background task; it stops
        # when the consumer or the fetcher stops (both are mode Services).
        deliver = self.callback
        read_offsets = self._read_offset
        suspended = self.suspend_flow.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        since_yield = 0
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batch = self.getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany may return at once, again and again
                if self.should_stop:
                    continue
                async for tp, message in batch:
                    since_yield += 1
                    if since_yield >= YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
                    offset = message.offset
                    last = read_offsets[tp]
                    if last is not None and offset < last:
                        continue  # already read: Faust drops these too
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, last + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if suspended():
                        await self.wait_first(deliver(message), self.suspend_flow.wait())
                    else:
                        await deliver(message)
                    read_offsets[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise


class DeliveryTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose consumer is `DeliveryConsumer`."""

    Consumer: ClassVar[type[Any]] = DeliveryConsumer


class RectuneFaustApp(faust.App):
    """`faust.App` on `DeliveryTransport` (called by `streams.app.build_app`)."""

    def _new_transport(self) -> Any:
        return DeliveryTransport(self.conf.broker_consumer, self)

    def _create_directories(self) -> None:
        # Faust makes `<app_id>-data/v1/tables` in the working directory at first start, for RocksDB tables.
        # Our store is `memory://` and our state lives in the checkpoint topic, so the directory would only
        # litter every directory a worker was started from.
        return None
