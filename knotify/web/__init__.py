"""The web face of knotify: ``knotify web`` (aiohttp) and ``knotify report --html``.

It reads the journal read-only (:mod:`knotify.web.data` holds every query) and follows
the router's PUB socket for live updates; it never reaches into the router.
"""
