"""The serving process: one :class:`ModelManager`, REST on uvicorn and gRPC
on grpcio, started and stopped together (``fermtl serve``, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
from typing import Optional

import uvicorn

from pipeline.serving.batching import BatchingConfig
from pipeline.serving.grpc_api import make_grpc_server
from pipeline.serving.limits import Counters, Limits
from pipeline.serving.rest import counting_protocol, make_app
from pipeline.serving.versions import ModelManager

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServingConfig:
    host: str = "127.0.0.1"
    rest_port: int = 8501           # TF Serving's defaults; 0 picks a free port
    grpc_port: int = 8500           # -1: no gRPC
    name: Optional[str] = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    batching: BatchingConfig = dataclasses.field(default_factory=BatchingConfig)
    poll_s: float = 1.0             # model base dir polling (0: never)
    keep_versions: int = 2
    grpc_workers: int = 64


class Server:
    """Both front ends over one model; ``start()`` returns once they listen."""

    def __init__(self, model_dir: str, config: Optional[ServingConfig] = None):
        self.config = cfg = config or ServingConfig()
        self.counters = Counters()
        self.manager = ModelManager(model_dir, cfg.name, cfg.batching, cfg.limits.max_pixels,
                                    cfg.poll_s, cfg.keep_versions)
        self.name = self.manager.name
        self._sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((cfg.host, cfg.rest_port))
        self.rest_port = self._sock.getsockname()[1]
        self._uvicorn = uvicorn.Server(uvicorn.Config(
            make_app(self.manager, cfg.limits, self.counters), host=cfg.host,
            http=counting_protocol(self.counters, cfg.limits), lifespan="off",
            access_log=False, log_level="warning", timeout_keep_alive=5,
            backlog=2048))
        self._grpc, self.grpc_port = (None, None)
        if cfg.grpc_port >= 0:
            self._grpc, self.grpc_port = make_grpc_server(
                self.manager, cfg.limits, self.counters, cfg.host, cfg.grpc_port,
                cfg.grpc_workers)
        self._thread: Optional[threading.Thread] = None

    @property
    def rest_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.rest_port}"

    def start(self) -> "Server":
        if self._grpc is not None:
            self._grpc.start()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._uvicorn.serve(sockets=[self._sock])),
            name="rest", daemon=True)
        self._thread.start()
        while not self._uvicorn.started and self._thread.is_alive():
            self._thread.join(0.02)
        if not self._uvicorn.started:
            raise RuntimeError("the REST server did not start (see the log)")
        return self

    def wait(self) -> None:
        """Block until stopped (Ctrl-C stops)."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()
        self._sock.close()
        self.manager.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_server(model_dir: str, config: Optional[ServingConfig] = None, **overrides) -> Server:
    """A :class:`Server` (not started); ``overrides`` set :class:`ServingConfig`
    fields, ``Limits`` and ``BatchingConfig`` fields by name."""
    config = config or ServingConfig()
    for key, value in overrides.items():
        for target in (config, config.limits, config.batching):
            if hasattr(target, key):
                setattr(target, key, value)
                break
        else:
            raise TypeError(f"unknown serving option {key!r}")
    return Server(model_dir, config)
