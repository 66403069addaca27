"""An httpx transport that keeps ``max_connections`` keep-alive connections in several small httpcore pools.

httpcore's pool rescans every connection (polling idle sockets) for every queued request on every
acquire/release, so one 32-connection pool spends ~2.4 ms CPU per request at 32 concurrent calls (and grows
quadratically); pools of 4 cost ~0.7 ms. At 32-64 concurrent calls that bookkeeping was the main CPU cost of
the whole OpenRouter client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx


class ShardedTransport(httpx.AsyncBaseTransport):
    """Each request goes to the least-loaded pool (relative to its size, so a queue is spread evenly over the
    connections); pools are created only when the ones in use are full, so low concurrency stays on one or two
    warm pools."""

    def __init__(self, max_connections: int, *, per_pool: int = 4) -> None:
        total, per_pool = max(1, max_connections), max(1, per_pool)
        # Pool sizes add up to exactly max_connections: [4, 4, ..., remainder].
        self._sizes = [per_pool] * (total // per_pool) + ([total % per_pool] if total % per_pool else [])
        # One TLS context for every pool: each pool would otherwise load the CA bundle (~20 ms) on the loop.
        self._ssl = httpx.create_ssl_context()
        self._pools: list[httpx.AsyncHTTPTransport] = []
        self._load: list[int] = []

    def _pick(self) -> int:
        best = -1
        for i, load in enumerate(self._load):
            if load < self._sizes[i]:
                return i
            # Every pool in use is full: queue where the requests per connection are fewest.
            if best < 0 or load * self._sizes[best] < self._load[best] * self._sizes[i]:
                best = i
        if len(self._pools) < len(self._sizes):
            size = self._sizes[len(self._pools)]
            limits = httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0)
            self._pools.append(httpx.AsyncHTTPTransport(verify=self._ssl, limits=limits))
            self._load.append(0)
            return len(self._pools) - 1
        return best

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = self._pick()
        self._load[i] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._load[i] -= 1

        try:
            response = await self._pools[i].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_ReleasingStream(response.stream, release), extensions=response.extensions)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner, self._release = inner, release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()
