from ioc.hub import RESYNC, Hub


async def test_slow_subscriber_is_told_to_resync_and_others_keep_receiving() -> None:
    hub = Hub(queue_size=3)
    slow, fast = hub.subscribe({"wall"}), hub.subscribe({"wall"})
    for i in range(3):
        hub.publish("wall", {"id": i, "type": "alert"})
        assert (await fast.queue.get())["id"] == i
    hub.publish("wall", {"id": 3, "type": "alert"})
    assert slow.overflowed and len(hub) == 1
    got = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert [e.get("id") for e in got[:3]] == [0, 1, 2] and got[3] is RESYNC
    assert (await fast.queue.get())["id"] == 3


async def test_subscribers_get_only_their_channels() -> None:
    hub = Hub(queue_size=10)
    wall, crew = hub.subscribe({"wall", "supervisor"}), hub.subscribe({"crew:W1"})
    hub.publish("wall", {"id": 1})
    hub.publish("crew:W1", {"id": 2})
    hub.publish("crew:W2", {"id": 3})
    hub.publish("supervisor", {"id": 4})
    assert [wall.queue.get_nowait()["id"] for _ in range(wall.queue.qsize())] == [1, 4]
    assert [crew.queue.get_nowait()["id"] for _ in range(crew.queue.qsize())] == [2]
