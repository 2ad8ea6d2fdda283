"""streams.direct without a broker: nothing sent is delivered at once; an unreachable broker
keeps a message pending (never dropped), so the commit that waits for it is skipped."""

from __future__ import annotations

from streamrec.config import Settings
from streamrec.devtools.localkafka import free_port
from streamrec.streams.direct import DirectProducer


async def test_nothing_sent_is_delivered_and_no_client_is_made():
    p = DirectProducer(Settings(bootstrap_servers="127.0.0.1:1"))
    assert await p.wait_delivered(0.1) and p.pending() == 0
    assert p._client is None and p.close(0.1) == 0


async def test_unreachable_broker_keeps_the_message_pending():
    p = DirectProducer(Settings(bootstrap_servers=f"127.0.0.1:{free_port()}"), config={"log_level": 0})
    await p.channel("t").send(key=b"u1", value=b"{}")
    assert p.pending() == 1
    assert not await p.wait_delivered(0.3)  # not acknowledged: a commit would be skipped
    assert p.pending() == 1 and p.failed == 0  # still queued (no deadline), not dropped
    p._producer.purge()
