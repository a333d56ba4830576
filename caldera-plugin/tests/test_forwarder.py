"""Tests of the sidecar_push plugin without Caldera: a fake event service and app service,
events from ../shared/fixtures/caldera/events.jsonl (real Caldera 5.3.0), and a real local
HTTP server standing in for the sidecar.

Run: python3 -m unittest discover -s caldera-plugin/tests (scripts/test.sh does)."""

import asyncio
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'sidecar_push', 'app'))

import forwarder  # noqa: E402
from forwarder import Forwarder, reduce_event  # noqa: E402

OP = '0b4d1f2c-6ad4-4c1e-9f0a-6a8bd0c5a3e1'
LINK = '5e7b6f0e-2f38-4d0e-8d0b-0cf1d4f7a2b9'


def fixtures():
    d = os.environ.get('CALDERA_FIXTURES_DIR') or os.path.join(HERE, '..', '..', '..', 'shared', 'fixtures', 'caldera')
    path = os.path.join(d, 'events.jsonl')
    return path if os.path.exists(path) else None


class FakeEventSvc:
    def __init__(self):
        self.listeners = []

    async def register_global_event_listener(self, cb):
        self.listeners.append(cb)

    def fire(self, event, **kwargs):
        # What Caldera's notify_global_event_listeners does.
        for c in self.listeners:
            c(event, **kwargs)


class FakeOp:
    def __init__(self, id):
        self.id = id


class FakeAppSvc:
    def __init__(self, mapping):
        self.mapping = mapping
        self.calls = 0

    async def find_op_with_link(self, link_id):
        self.calls += 1
        op = self.mapping.get(link_id)
        return FakeOp(op) if op else None


class Recorder:
    def __init__(self, status=202, fail=None, hang=False):
        self.bodies = []
        self.status = status
        self.fail = fail
        self.hang = hang

    async def __call__(self, url, body, headers, timeout, verify_tls):
        self.headers = headers
        if self.hang:
            await asyncio.sleep(30)
        if self.fail:
            raise self.fail
        self.bodies.append(json.loads(body))
        return self.status


def run(coro):
    return asyncio.run(coro)


class ReduceTests(unittest.TestCase):
    def test_events_are_reduced_to_ids_and_states(self):
        m = reduce_event('link/completed', dict(agent={'paw': 'x', 'links': [1] * 100}, pid='12',
                                               link_id=LINK, access=1, metadata={'timestamp': 5.5}))
        self.assertEqual(m, {'event': 'link/completed', 'timestamp': 5.5, 'link_id': LINK})
        m = reduce_event('link/status_changed', dict(link=LINK, from_status=-3, to_status=0, metadata={}))
        self.assertEqual(m['to_status'], 0)
        m = reduce_event('operation/state_changed', dict(op=OP, from_state='running', to_state='finished'))
        self.assertEqual(m['to_state'], 'finished')
        self.assertIsNone(reduce_event('fact/added', dict(fact={})))
        self.assertIsNone(reduce_event('link/completed', dict(link_id=None)))
        self.assertIsNone(reduce_event('operation/completed', dict(op=['not', 'an', 'id'])))

    def test_every_recorded_event_reduces_without_error(self):
        path = fixtures()
        if path is None:
            self.skipTest('events.jsonl not found (set CALDERA_FIXTURES_DIR)')
        kept = 0
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                m = reduce_event(rec['event'], rec['payload'])
                if m is not None:
                    kept += 1
                    self.assertLess(len(json.dumps(m)), 400)
                    self.assertNotIn('agent', m)
        # 46 link/completed + 47 link/status_changed + 15 state_changed + 8 completed + 2 agent/added
        self.assertEqual(kept, 118)


class ForwarderTests(unittest.TestCase):
    def make(self, sender, **kw):
        svc = FakeEventSvc()
        app = FakeAppSvc({LINK: OP})
        fw = Forwarder({'event_svc': svc, 'app_svc': app}, url='http://127.0.0.1:9', api_key='k',
                       sender=sender, heartbeat=0.05, **kw)
        return fw, svc, app

    def test_events_are_batched_with_operation_ids_and_the_key(self):
        async def go():
            rec = Recorder()
            fw, svc, app = self.make(rec)
            await fw.start()
            svc.fire('link/completed', link_id=LINK, pid='1', agent={}, access=1, metadata={'timestamp': 1.0})
            svc.fire('link/status_changed', link=LINK, from_status=-3, to_status=0, metadata={'timestamp': 1.1})
            svc.fire('fact/added', fact={}, metadata={})
            await asyncio.sleep(0.2)
            await fw.stop()
            return rec, fw, app
        rec, fw, app = run(go())
        events = [e for b in rec.bodies for e in b['events']]
        self.assertEqual([e['event'] for e in events], ['link/completed', 'link/status_changed'])
        self.assertTrue(all(e['operation_id'] == OP for e in events))
        self.assertEqual(app.calls, 1, 'one lookup per link per batch')
        self.assertEqual(rec.headers, {'X-API-Key': 'k'})
        self.assertTrue(any(b['events'] == [] for b in rec.bodies), 'heartbeat when quiet')
        self.assertEqual(rec.bodies[0]['plugin'], 'sidecar_push')
        self.assertEqual(fw.dropped, 0)

    def test_a_full_queue_drops_and_counts_and_never_raises(self):
        async def go():
            fw, svc, _ = self.make(Recorder(), max_queue=10)
            await svc.register_global_event_listener(fw.on_event)  # not started: nothing drains
            for _ in range(25):
                svc.fire('operation/completed', op=OP, metadata={})
            fw.on_event('link/completed', **{'link_id': object()})  # garbage: ignored
            fw.on_event(None)
            return fw
        fw = run(go())
        self.assertEqual(fw.queue.qsize(), 10)
        self.assertEqual(fw.dropped, 15)

    def test_an_absent_sidecar_costs_a_short_timeout_then_drops(self):
        async def go():
            fw, svc, _ = self.make(Recorder(hang=True), timeout=0.1, retry_after=60)
            fw.on_event('operation/completed', op=OP, metadata={})
            t = asyncio.get_event_loop().time()
            await fw.send_once()
            took = asyncio.get_event_loop().time() - t
            # Paused: the next events are dropped at once, without a request.
            fw.on_event('operation/completed', op=OP, metadata={})
            await fw.send_once()
            return fw, took
        fw, took = run(go())
        self.assertLess(took, 5.0, 'bounded by the 0.1 s timeout, not the 30 s hang')
        self.assertEqual(fw.dropped, 2)
        self.assertEqual(fw.failures, 1)

    def test_refusals_and_errors_are_counted(self):
        async def go():
            fw, _, _ = self.make(Recorder(status=401), retry_after=0)
            fw.on_event('operation/completed', op=OP, metadata={})
            await fw.send_once()
            fw.sender = Recorder(fail=ConnectionRefusedError())
            fw.on_event('operation/completed', op=OP, metadata={})
            await fw.send_once()
            return fw
        fw = run(go())
        self.assertEqual((fw.failures, fw.dropped), (2, 2))

    def test_the_stdlib_client_posts_to_a_real_server(self):
        async def go():
            got = {}

            async def handle(reader, writer):
                head = await reader.readuntil(b'\r\n\r\n')
                length = int([h for h in head.split(b'\r\n') if h.lower().startswith(b'content-length')][0].split(b':')[1])
                got['head'] = head.decode()
                got['body'] = json.loads(await reader.readexactly(length))
                writer.write(b'HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n')
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(handle, '127.0.0.1', 0)
            port = server.sockets[0].getsockname()[1]
            status = await forwarder.http_post('http://127.0.0.1:%d' % port, b'{"a": 1}', {'X-API-Key': 's'}, 2.0)
            server.close()
            return status, got
        status, got = run(go())
        self.assertEqual(status, 202)
        self.assertIn('POST /api/v2/events HTTP/1.1', got['head'])
        self.assertIn('X-API-Key: s', got['head'])
        self.assertEqual(got['body'], {'a': 1})

    def test_settings_come_from_the_environment(self):
        s = forwarder.settings_from_env({'SIDECAR_URL': 'https://h:1', 'SIDECAR_API_KEY': 'x',
                                         'SIDECAR_VERIFY_TLS': 'false'})
        self.assertEqual(s, {'url': 'https://h:1', 'api_key': 'x', 'key_header': 'X-API-Key',
                             'verify_tls': False})


if __name__ == '__main__':
    unittest.main()
