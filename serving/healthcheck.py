"""Ask a tailrank server's grpc.health.v1 whether it is SERVING; the exit code says.

    python -m serving.healthcheck [--target localhost:50051] [--service NAME] [--timeout-s 3]

For container health checks (serving/deploy/Dockerfile's HEALTHCHECK) and scripts. Exit 0
only when the server answers SERVING for ``--service`` before the deadline; exit 1 for
anything else: NOT_SERVING (warming up or shutting down), a service the server does not
know, no answer before the deadline, nothing listening. A bad command line exits 2.

The default target is ``localhost`` on ``TAILRANK_PORT`` (the server's own port variable,
default 50051), so a container that moves the server's port moves its check too. A
server with TLS is checked with ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mTLS),
one whose health is closed to callers without a token with ``--token-file``
(serving.clientconn, docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.clientconn import ClientSetupError, add_connection_flags, open_channel
from serving.config import ENV_PREFIX, ServerConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
PORT_ENV = ENV_PREFIX + "PORT"


def default_target() -> str:
    """``localhost:<TAILRANK_PORT or the server's default port>``."""
    return f"localhost:{os.environ.get(PORT_ENV) or ServerConfig.port}"


def check(
    target: str,
    service: str = "",
    timeout_s: float = 3.0,
    connection: argparse.Namespace | None = None,
) -> tuple[bool, str]:
    """One Health/Check call with a deadline: (SERVING?, a line saying what was seen).
    ``connection``: the TLS and token flags (None: plaintext, no token)."""
    request = health_pb2.HealthCheckRequest(service=service)
    with open_channel(target, connection) as channel:
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
    add_connection_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        serving, line = check(args.target or default_target(), args.service, args.timeout_s, args)
    except ClientSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(line)  # a container engine keeps the last lines of its health checks' output
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
