"""``sleep-cds serve``: the service under uvicorn, as deployed."""

from __future__ import annotations

import argparse

from service.config import get_settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service import logging as service_logging
    from service.http_protocol import HeaderDeadlineProtocol
    from service.security import assert_safe_startup

    settings = get_settings()
    service_logging.configure(settings.log_level)
    assert_safe_startup(settings)
    print(f"Discovery: http://{settings.host}:{settings.port}/cds-services", flush=True)
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop",
        http=HeaderDeadlineProtocol,  # httptools with a header deadline (slowloris)
        access_log=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=8,
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the ``sleep-cds`` parser."""
    serve = subparsers.add_parser("serve", help="serve the CDS service (CDS_HOST, CDS_PORT)")
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)
