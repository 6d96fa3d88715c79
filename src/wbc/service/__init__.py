"""``wbc serve``: the review workstation and the API for lab systems.

Flow: ``uploads`` (checks every file) → ``db`` (samples, fields, cells, audit; Alembic migrations)
→ ``analysis`` (background :func:`wbc.counting.count_sample`) → ``review`` (reclassify, sign off,
export, report) → ``app`` (FastAPI routes under ``/api/v1``, the UI in ``static/``). See
docs/service.md and docs/decisions/0007-web-service.md.
"""

from __future__ import annotations

from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app", "serve"]


def create_app(settings: ServiceSettings, predictor=None):
    from .app import create_app as _create_app
    return _create_app(settings, predictor)


def serve(settings: ServiceSettings) -> None:
    """Run the server until interrupted (``wbc serve``)."""
    import logging

    import uvicorn

    import socket

    from ..errors import WbcError

    settings.check()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a clear message instead of uvicorn's exit
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise WbcError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
                           "(another server running? choose another --port)") from None
    app = create_app(settings)
    logging.getLogger("wbc").setLevel(logging.INFO)
    print(f"wbc serve: http://{settings.host}:{settings.port}/ (API docs at /docs); data in "
          f"{settings.data_dir.resolve()}; database {app.state.service.db.backend}"
          + ("; writes need the API token" if settings.token else ""), flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
