"""The gRPC face: the PreTradeRisk servicer and everything a call passes through.

``servicer`` answers the RPCs; ``requests`` checks their shape; ``status``
is the one place errors and rejections become the wire's codes and
messages; ``malformed`` and ``access`` are the interceptors (unparseable
bytes, tokens and roles); ``roles`` names the roles; ``health`` is the
standard health service.
"""
