"""The standard gRPC health service, with Watch streams that end at shutdown.

grpcio-health-checking's asyncio ``Watch`` waits for the next status change
for ever. ``enter_graceful_shutdown`` does tell every watcher NOT_SERVING,
but the stream then stays open, and a graceful ``server.stop(grace)`` waits
the whole grace period for it: one load balancer watching health would delay
every shutdown (and the audit flush after it) by that much. Here a watcher
gets NOT_SERVING and then its stream ends with OK, like the portfolio streams
end at shutdown.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):
    """The standard asyncio health servicer; Watch ends after NOT_SERVING at shutdown.

    The override follows the upstream ``Watch`` of grpcio-health-checking
    (pinned in pyproject.toml) and reads the same private state: the status
    table, the per-service conditions and the shutdown flag. Unlike upstream
    it leaves the service's condition in place when a watcher leaves, so the
    other watchers of that service keep hearing of changes.
    """

    async def Watch(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (gRPC name)
                    context: Any) -> None:
        condition = self._server_watchers[request.service]
        last_status = None
        async with condition:
            while True:
                status = self._server_status.get(
                    request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != last_status:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last_status = status
                if self._gracefully_shutting_down:
                    return
                await condition.wait()
