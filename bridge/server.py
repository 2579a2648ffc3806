"""Serving the bridge with gunicorn (also what `textback serve` runs)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from core.config import Config


class _Gunicorn(BaseApplication):
    def __init__(self, config: Config, options: dict[str, Any], insecure_dev: bool) -> None:
        self.textback_config = config
        self.options = options
        self.insecure_dev = insecure_dev
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from bridge.app import create_app
        from core import logs

        logs.setup(self.textback_config.log_level)
        return create_app(self.textback_config, insecure_dev=self.insecure_dev)


def run_gunicorn(
    config: Config, host: str, port: int, workers: int, threads: int, insecure_dev: bool
) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": 30,
        "graceful_timeout": 10,
        "accesslog": None,
        "loglevel": "warning",
    }
    from bridge.metrics_multiproc import gunicorn_options

    options.update(gunicorn_options())  # metrics from every worker: set up before the fork
    _Gunicorn(config, options, insecure_dev).run()
