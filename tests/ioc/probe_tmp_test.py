import asyncio, json
from tests.ioc.test_live import *  # noqa
from tests.ioc.test_live import Alerts, connect, recv, last_logged

async def test_probe(small_queue_api, alerts, database):
    api = small_queue_api
    c = centre_of(api)
    viewer = await token(api, "viewer")
    big = "x" * 100_000
    async with connect(api, viewer, max_size=None) as fast, connect(api, viewer, max_size=None, max_queue=1) as slow:
        await recv(fast); await recv(slow)
        async def rf():
            while True:
                await fast.recv()
        t = asyncio.create_task(rf())
        for i in range(60):
            await c.receive([alerts(f"pipe-{i}", explanation=big)])
            await asyncio.sleep(0.01)
            if i % 10 == 0:
                print(i, [s.queue.qsize() for s in c.hub._subscribers], len(slow.recv_messages.frames) if hasattr(slow.recv_messages,'frames') else None, slow.transport.get_write_buffer_size(), slow.transport.is_reading())
        t.cancel()
