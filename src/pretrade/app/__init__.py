"""Putting a server together: settings, security, the gateway process, dev conveniences.

``config`` reads the settings; ``security`` turns them into TLS credentials
and interceptors; ``server`` assembles one gateway process (and its workers)
from every other room; ``devredis`` is the embedded redis-server and
``demo`` the demo book of ``make serve``.
"""
