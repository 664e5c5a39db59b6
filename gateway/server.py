"""Run the gateway: start-up → serve (public + admin listeners) → graceful shutdown.

Both listeners run in one event loop and share one `Runtime`. SIGTERM/SIGINT stop
accepting, drain in-flight requests (streams included) for up to the drain timeout, then
close the upstream pool and the store. SIGHUP reloads rules.yaml (a bad file is refused
and the old rules stay).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import uvicorn

from gateway import accesslog
from gateway.admin.app import build_admin_app
from gateway.app import GatewayApp
from gateway.httpserver import GatewayHttpProtocol
from gateway.runtime import Runtime

log = logging.getLogger("gateway")


def _uvicorn_config(app: object, host: str, port: int, drain_s: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        lifespan="off",
        http=GatewayHttpProtocol,  # unparseable requests answered in problem+json
        access_log=False,        # we write our own JSON access log
        server_header=False,     # the upstream's headers pass through untouched
        date_header=False,
        proxy_headers=False,     # trust in forwarding headers is ours to decide (rules.yaml)
        log_config=None,
        timeout_graceful_shutdown=max(1, round(drain_s)),
        timeout_keep_alive=75,
    )


class Gateway:
    """The two listeners around one runtime; `start()` returns once both accept."""

    def __init__(self, runtime: Runtime) -> None:
        s = runtime.settings
        self.runtime = runtime
        self.public = uvicorn.Server(
            _uvicorn_config(GatewayApp(runtime), s.host, s.port, s.drain_timeout_s))
        self.admin = uvicorn.Server(
            _uvicorn_config(build_admin_app(runtime), s.admin_host, s.admin_port, 5.0))
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def started(self) -> bool:
        return bool(self.public.started and self.admin.started)

    def port(self, which: str = "public") -> int:
        server = self.public if which == "public" else self.admin
        return int(server.servers[0].sockets[0].getsockname()[1])

    async def start(self) -> None:
        await self.runtime.start()
        # Server.serve() would install its own process-wide signal handlers; we own them.
        self._tasks = [asyncio.create_task(self.public._serve()),
                       asyncio.create_task(self.admin._serve())]
        while not self.started:
            if any(t.done() for t in self._tasks):
                await self.stop()
                raise SystemExit("a listener failed to start (is the port in use?)")
            await asyncio.sleep(0.01)

    def request_stop(self, force: bool = False) -> None:
        self.public.should_exit = self.admin.should_exit = True
        if force:
            self.public.force_exit = self.admin.force_exit = True

    async def wait(self) -> None:
        """Until either listener ends (a signal, or a failure); then stop the other."""
        await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        self.request_stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.runtime.close()


async def serve(
    runtime: Runtime,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; returns after a graceful shutdown."""
    accesslog.configure(runtime.settings.access_log)
    gateway = Gateway(runtime)
    loop = asyncio.get_running_loop()
    stopping = False

    def on_stop_signal() -> None:
        nonlocal stopping
        gateway.request_stop(force=stopping)  # a second signal: stop without draining
        stopping = True

    def on_reload_signal() -> None:
        for problem in runtime.reload():
            log.error("reload refused: %s", problem)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    try:
        await gateway.start()
        s = runtime.settings
        log.info("public listener on http://%s:%d, admin on http://%s:%d",
                 s.host, gateway.port("public"), s.admin_host, gateway.port("admin"))
        if on_ready is not None:
            await on_ready(gateway)
        await gateway.wait()
    finally:
        await gateway.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("stopped")
