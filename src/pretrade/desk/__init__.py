"""The risk desk: a web page over the gateway (``pretrade desk``).

A gRPC client of the gateway like any other, with the signed-in user's own
bearer token: it never reads Redis. :mod:`pretrade.desk.web` serves the page
and pushes to the browser with server-sent events.
"""
