from ioc.hub import RESYNC, Hub


async def test_slow_subscriber_is_told_to_resync_and_others_keep_receiving() -> None:
    hub = Hub(queue_size=3)
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(3):
        hub.publish({"type": "alert", "n": i})
        assert (await fast.queue.get())["n"] == i
    hub.publish({"type": "alert", "n": 3})
    assert slow.overflowed and len(hub) == 1
    got = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert [e.get("n") for e in got[:3]] == [0, 1, 2] and got[3] is RESYNC
    assert (await fast.queue.get())["n"] == 3


async def test_events_get_increasing_ids() -> None:
    hub = Hub(queue_size=10)
    sub = hub.subscribe()
    ids = [hub.publish({"type": "x"}) for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [sub.queue.get_nowait()["id"] for _ in range(3)] == ids
