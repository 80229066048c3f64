"""`KafkaConfigWriter` on a real broker (tansu): confirmed appends, exactly-once by action id, races refused."""

from __future__ import annotations

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from agents.loop import AppendConfig
from agents.runtime import ConfigRaceError, KafkaConfigWriter
from rectune.admin import ensure_topics
from rectune.config_log_io import append_change, draft, read_log, replay
from schemas.config import ConfigError, default_config
from schemas.config_log import Keyring
from schemas.topics import CONFIG

KEYRING = Keyring.parse("k1:" + "cd" * 16, "k1")


class RacedWriter(KafkaConfigWriter):
    """Lets another writer append right before our record goes out (once)."""

    race = True

    async def _produce(self, value: bytes) -> int:
        if self.race:
            self.race = False
            change = draft("config", author="person:ana", reason="manual", config=default_config(), activate=True)
            await append_change(self.bootstrap, change, KEYRING)
        return await super()._produce(value)


async def test_append_is_confirmed_once_per_action_and_races_are_refused(tansu_broker: str) -> None:
    await ensure_topics(tansu_broker, [CONFIG])
    producer = AIOKafkaProducer(bootstrap_servers=tansu_broker, acks="all")
    await producer.start()
    writer = KafkaConfigWriter(tansu_broker, producer, KEYRING)
    raced = RacedWriter(tansu_broker, producer, KEYRING)
    try:
        seed = AppendConfig(kind="config", reason="seed", config=default_config(), activate=True, action_id="a1.0")
        assert await writer.append(seed, 1) == 1
        assert (await writer.head()).version == 1
        assert await writer.append(seed, 1) == 1, "the same action again: found on the log, not appended"
        assert len(await read_log(tansu_broker)) == 1

        cfg = default_config()
        bad = msgspec.structs.replace(cfg, re_rank=msgspec.structs.replace(cfg.re_rank, exploration_rate=0.5))
        with pytest.raises(ConfigError, match="exploration_rate"):  # the sidecars' guardrails refuse it
            await writer.append(AppendConfig(kind="config", reason="bad", config=bad, action_id="a2.0"), 1)
        assert len(await read_log(tansu_broker)) == 1, "nothing appended"

        candidate = msgspec.structs.replace(cfg, rank=msgspec.structs.replace(cfg.rank, cut=90))
        action = AppendConfig(kind="config", reason="candidate", config=candidate, action_id="a3.0")
        with pytest.raises(ConfigRaceError, match="person:ana") as info:
            await raced.append(action, 2)
        assert info.value.field == "version"
        history = replay(await read_log(tansu_broker), KEYRING)
        assert [e.accepted for e in history.entries] == [True, True, False]  # ours is on the log, refused: no fork
        assert history.state.version == 2 and history.entries[1].change is not None
        assert history.entries[1].change.author == "person:ana"

        assert await raced.append(action, 2) == 3, "retried on the re-folded head (the next tick)"
        assert await raced.append(action, 2) == 3
        history = replay(await read_log(tansu_broker), KEYRING)
        assert history.state.version == 3 and len(history.entries) == 4
        assert history.state.configs[3] == candidate
    finally:
        await writer.close()
        await raced.close()
        await producer.stop()
