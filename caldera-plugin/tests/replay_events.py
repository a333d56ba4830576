"""Replays Caldera's recorded event stream through the sidecar_push plugin into a running
sidecar: the plugin's real code (listener, queue, batches, stdlib HTTP client) with a fake event
service firing the recorded events and a fake app_svc answering find_op_with_link from a map.

Usage: python3 replay_events.py SIDECAR_URL EVENTS_JSONL LINK_MAP_JSON [SPEED [API_KEY]]
SPEED: replay the recorded gaps between events this many times faster (0: no gaps).
Prints one JSON line: {"fired", "sent", "dropped", "failures"}; exit 0 when nothing was dropped.
(Used by tests/push.rs.)"""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'sidecar_push', 'app'))

from forwarder import Forwarder  # noqa: E402
from test_forwarder import FakeAppSvc, FakeEventSvc  # noqa: E402


async def main(url, events_path, map_path, speed, key):
    with open(map_path) as f:
        link_map = json.load(f)
    svc = FakeEventSvc()
    import time
    from forwarder import http_post
    t0 = time.time()

    async def timed(*a):
        r = await http_post(*a)
        if os.environ.get('REPLAY_TRACE'):
            with open(os.environ['REPLAY_TRACE'], 'a') as f:
                f.write('%.3f %s %d\n' % (time.time() - t0, r, len(json.loads(a[1])['events'])))
        return r

    fw = Forwarder({'event_svc': svc, 'app_svc': FakeAppSvc(link_map)}, url=url, api_key=key,
                   heartbeat=0.2, timeout=5.0, sender=timed)
    await fw.start()
    fired = 0
    last = None
    with open(events_path) as f:
        for line in f:
            rec = json.loads(line)
            ts = rec['payload'].get('metadata', {}).get('timestamp')
            if speed > 0 and ts is not None and last is not None and ts > last:
                await asyncio.sleep((ts - last) / speed)
            last = ts if ts is not None else last
            svc.fire(rec['event'], **rec['payload'])
            fired += 1
            if fired % 20 == 0:
                await asyncio.sleep(0)  # let the sender run, as Caldera's loop would
    while not fw.queue.empty():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the last batch and a heartbeat
    await fw.stop()
    print(json.dumps({'fired': fired, 'sent': fw.sent, 'dropped': fw.dropped, 'failures': fw.failures}))
    return 0 if fw.dropped == 0 else 1


if __name__ == '__main__':
    a = sys.argv[1:]
    speed = float(a[3]) if len(a) > 3 else 0.0
    sys.exit(asyncio.run(main(a[0], a[1], a[2], speed, a[4] if len(a) > 4 else None)))
