"""Ask a tailrank server's grpc.health.v1 whether it is SERVING; the exit code says.

    python -m serving.healthcheck [--target localhost:50051] [--service NAME] [--timeout-s 3]

For container health checks (serving/deploy/Dockerfile's HEALTHCHECK) and scripts. Exit 0
only when the server answers SERVING for ``--service`` before the deadline; exit 1 for
anything else: NOT_SERVING (warming up or shutting down), a service the server does not
know, no answer before the deadline, nothing listening. A bad command line exits 2.

The default target is ``localhost`` on ``TAILRANK_PORT`` (the server's own port variable,
default 50051), so a container that moves the server's port moves its check too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.config import ENV_PREFIX, ServerConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
PORT_ENV = ENV_PREFIX + "PORT"


def default_target() -> str:
    """``localhost:<TAILRANK_PORT or the server's default port>``."""
    return f"localhost:{os.environ.get(PORT_ENV) or ServerConfig.port}"


def check(target: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """One Health/Check call with a deadline: (SERVING?, a line saying what was seen)."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(request, timeout=timeout_s)
        except grpc.RpcError as exc:  # UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND (no service)
            return False, f"{target} service={service!r}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING, f"{target} service={service!r}: {status}"


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {raw}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.healthcheck",
        description="Exit 0 when the server's grpc.health.v1 says SERVING, 1 otherwise.",
    )
    parser.add_argument(
        "--target",
        default=None,
        help=f"server host:port (default: localhost:${PORT_ENV}, else {ServerConfig.port})",
    )
    parser.add_argument(
        "--service",
        default="",
        help="health service name; '' (default) is the whole server, "
        "tailrank.v1.RankingService the ranking API",
    )
    parser.add_argument(
        "--timeout-s", type=_positive, default=3.0, help="deadline of the call (default: 3)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    serving, line = check(args.target or default_target(), args.service, args.timeout_s)
    print(line)  # a container engine keeps the last lines of its health checks' output
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
