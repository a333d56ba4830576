"""The forwarder: observes Caldera's events and pushes small JSON batches to caldera-sidecar.

Why it is shaped like this: it runs inside Caldera's single event loop, so it must never slow
or break Caldera.
* It listens with `event_svc.register_global_event_listener` (Caldera >= 2.8.1): a plain call
  with the event's keyword arguments, and every listener gets its copy. (`observe_event`
  handles share one websocket message, so a second observer of the same event would take it
  away from another plugin; it is used only where the global listener does not exist.)
* The listener only reduces the event to ids and states and puts it in a bounded queue
  (`put_nowait`); a full queue drops the event and counts it. Nothing raises out of it.
* One background task sends batches (at most `batch` events, one request at a time) with a
  short timeout, and adds the operation id to link events (`app_svc.find_op_with_link`, once
  per link per batch). When the sidecar is away the batch is dropped and counted (the sidecar
  reconciles by polling when it sees the count grow), and sending pauses for `retry_after`
  seconds. A heartbeat (an empty batch) every `heartbeat` seconds tells the sidecar push is live.
* Only the standard library: a minimal HTTP/1.1 client on asyncio streams.
"""

import asyncio
import json
import logging
import os
import ssl
import time
from urllib.parse import urlsplit

WANTED = ('link/completed', 'link/status_changed', 'operation/state_changed',
          'operation/completed', 'agent/added')
MAX_ID = 128

log = logging.getLogger('sidecar_push')


def settings_from_env(env=None):
    env = os.environ if env is None else env
    return dict(
        url=env.get('SIDECAR_URL', 'http://127.0.0.1:8889'),
        api_key=env.get('SIDECAR_API_KEY') or None,
        key_header=env.get('SIDECAR_API_KEY_HEADER', 'X-API-Key'),
        verify_tls=env.get('SIDECAR_VERIFY_TLS', 'true').lower() not in ('0', 'false', 'no', 'off'),
    )


def _text(v):
    return v if isinstance(v, str) and 0 < len(v) <= MAX_ID else None


def reduce_event(event, kwargs):
    """The small message for one Caldera event, or None for events the sidecar does not use."""
    if event not in WANTED:
        return None
    meta = kwargs.get('metadata')
    ts = meta.get('timestamp') if isinstance(meta, dict) else None
    msg = {'event': event}
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        msg['timestamp'] = float(ts)
    if event == 'link/completed':
        msg['link_id'] = _text(kwargs.get('link_id'))
    elif event == 'link/status_changed':
        msg['link_id'] = _text(kwargs.get('link'))
        for k in ('from_status', 'to_status'):
            v = kwargs.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                msg[k] = v
    elif event == 'operation/state_changed':
        msg['operation_id'] = _text(kwargs.get('op'))
        for k in ('from_state', 'to_state'):
            if _text(kwargs.get(k)):
                msg[k] = kwargs[k]
    elif event == 'operation/completed':
        msg['operation_id'] = _text(kwargs.get('op'))
    elif event == 'agent/added':
        agent = kwargs.get('agent')
        paw = agent.get('paw') if isinstance(agent, dict) else None
        if _text(paw):
            msg['paw'] = paw
    if event.startswith('link/') and not msg.get('link_id'):
        return None
    if event.startswith('operation/') and not msg.get('operation_id'):
        return None
    return msg


async def http_post(url, body, headers, timeout, verify_tls=True):
    """POSTs `body` and returns the status code. Raises on any failure (the caller counts it)."""
    parts = urlsplit(url)
    secure = parts.scheme == 'https'
    port = parts.port or (443 if secure else 80)
    ctx = None
    if secure:
        ctx = ssl.create_default_context()
        if not verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE

    async def go():
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
        try:
            path = (parts.path.rstrip('/') or '') + '/api/v2/events'
            lines = ['POST %s HTTP/1.1' % path, 'Host: %s:%d' % (parts.hostname, port),
                     'Content-Type: application/json', 'Content-Length: %d' % len(body),
                     'Connection: close']
            lines += ['%s: %s' % (k, v) for k, v in headers.items()]
            writer.write(('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body)
            await writer.drain()
            status = await reader.readline()
            return int(status.split()[1])
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


class Forwarder:

    def __init__(self, services, url='http://127.0.0.1:8889', api_key=None, key_header='X-API-Key',
                 verify_tls=True, max_queue=2000, batch=100, timeout=2.0, heartbeat=30.0,
                 retry_after=5.0, sender=None):
        self.services = services
        self.url = url
        self.headers = {key_header: api_key} if api_key else {}
        self.verify_tls = verify_tls
        self.queue = asyncio.Queue(maxsize=max_queue)
        self.batch = batch
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.retry_after = retry_after
        self.sender = sender or http_post
        self.dropped = 0      # events lost: queue full, or their batch could not be delivered
        self.sent = 0
        self.failures = 0
        self.ignored_errors = 0
        self._task = None
        self._paused_until = 0.0

    async def start(self):
        event_svc = self.services.get('event_svc')
        if hasattr(event_svc, 'register_global_event_listener'):
            await event_svc.register_global_event_listener(self.on_event)
        else:
            for name in WANTED:
                exchange, queue = name.split('/')
                await event_svc.observe_event(self._on_websocket, exchange=exchange, queue=queue)
        self._task = asyncio.get_event_loop().create_task(self._run())
        log.info('sidecar_push: forwarding events to %s', self.url)

    async def stop(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None

    def on_event(self, event, **kwargs):
        """Caldera's global listener: called for every event; must be quick and never raise."""
        try:
            msg = reduce_event(event, kwargs)
            if msg is not None:
                self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
        except Exception:
            self.ignored_errors += 1

    async def _on_websocket(self, socket, path, services):
        try:
            data = json.loads(await asyncio.wait_for(socket.recv(), 1.0))
            self.on_event(path.strip('/'), **data)
        except Exception:
            self.ignored_errors += 1

    async def _next_batch(self):
        """Waits for events (at most `heartbeat` s), then takes what is queued, up to `batch`."""
        items = []
        try:
            items.append(await asyncio.wait_for(self.queue.get(), self.heartbeat))
        except asyncio.TimeoutError:
            return items
        while len(items) < self.batch:
            try:
                items.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    async def _add_operation_ids(self, items):
        app_svc = self.services.get('app_svc')
        found = {}
        for m in items:
            link = m.get('link_id')
            if not link or app_svc is None:
                continue
            if link not in found:
                try:
                    op = await app_svc.find_op_with_link(link)
                    found[link] = _text(getattr(op, 'id', None)) if op else None
                except Exception:
                    found[link] = None
            m['operation_id'] = found[link]

    async def send_once(self):
        items = await self._next_batch()
        if items and time.monotonic() < self._paused_until:
            self.dropped += len(items)
            return
        await self._add_operation_ids(items)
        body = json.dumps({'plugin': 'sidecar_push', 'version': 1, 'dropped': self.dropped,
                           'sent_at': time.time(), 'events': items}).encode()
        try:
            status = await asyncio.wait_for(
                self.sender(self.url, body, self.headers, self.timeout, self.verify_tls), self.timeout)
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                raise
            status = None
        if status is not None and 200 <= status < 300:
            self.sent += len(items)
            return
        self.failures += 1
        self.dropped += len(items)
        self._paused_until = time.monotonic() + self.retry_after
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning('sidecar_push: the sidecar at %s did not take events (status %s); %d dropped so far',
                        self.url, status, self.dropped)

    async def _run(self):
        while True:
            try:
                await self.send_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.ignored_errors += 1
                await asyncio.sleep(1)
