"""sidecar_push: forwards Caldera's link and operation events to caldera-sidecar.

Install: copy this folder to caldera/plugins/sidecar_push and add `sidecar_push` to the
`plugins:` list of Caldera's conf (see the caldera-sidecar README, "Push from Caldera").
"""

from plugins.sidecar_push.app.forwarder import Forwarder, settings_from_env

name = 'sidecar_push'
description = 'Pushes link and operation events to caldera-sidecar (POST /api/v2/events)'
address = None

_forwarder = None


async def enable(services):
    global _forwarder
    try:
        _forwarder = Forwarder(services, **settings_from_env())
        await _forwarder.start()
    except Exception as e:  # never break Caldera's start-up
        import logging
        logging.getLogger('sidecar_push').error('sidecar_push not enabled: %s', e)


async def destroy(services):
    if _forwarder is not None:
        await _forwarder.stop()
