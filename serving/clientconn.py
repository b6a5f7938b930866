"""How the command-line clients reach a server: TLS / mTLS and the bearer token.

``add_connection_flags(parser)`` gives a CLI (serving.client, serving.healthcheck) the
flags; ``open_channel(target, args)`` opens the channel they describe:

- plaintext by default; ``--tls`` for TLS with the system's CA roots, ``--tls-ca FILE``
  to trust that CA instead (either turns TLS on);
- ``--tls-cert`` / ``--tls-key``: the client's certificate and key, for a server that
  requires them (mTLS);
- ``--tls-server-name``: the name to check the server's certificate against, when the
  target's host is not in it (an IP address, a test certificate);
- ``--token-file FILE`` (or ``TAILRANK_TOKEN``): the bearer token, sent on every call as
  ``authorization: Bearer <token>``; never printed or logged.

Each TLS flag also reads ``TAILRANK_CLIENT_<FLAG>`` (``TAILRANK_CLIENT_TLS_CA``, ...), so
that a container's HEALTHCHECK (``python -m serving.healthcheck``, no flags) speaks TLS
when the deployment sets them; ``TAILRANK_TOKEN_FILE`` names the token file.
"""

from __future__ import annotations

import argparse
import collections
import os
from collections.abc import Mapping
from pathlib import Path

import grpc

from core.cli import parse_bool

TOKEN_ENV = "TAILRANK_TOKEN"
CLIENT_ENV = {  # flag -> the variable it falls back to
    "tls": "TAILRANK_CLIENT_TLS",
    "tls_ca": "TAILRANK_CLIENT_TLS_CA",
    "tls_cert": "TAILRANK_CLIENT_TLS_CERT",
    "tls_key": "TAILRANK_CLIENT_TLS_KEY",
    "tls_server_name": "TAILRANK_CLIENT_TLS_SERVER_NAME",
    "token_file": "TAILRANK_TOKEN_FILE",
}


class ClientSetupError(ValueError):
    """A client's TLS or token setting cannot be used; the message says which."""


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The TLS and token flags (see the module doc)."""
    group = parser.add_argument_group("TLS and authentication (docs/SECURITY.md)")
    flags = {
        "tls": "TLS with the system's CA roots",
        "tls_ca": "PEM CA certificate(s) to trust for the server (turns TLS on)",
        "tls_cert": "PEM client certificate, for mTLS",
        "tls_key": "PEM key of --tls-cert, for mTLS",
        "tls_server_name": "name the server's certificate must hold, when not the target's host",
        "token_file": f"file holding the bearer token (else the token itself from ${TOKEN_ENV})",
    }
    for name, text in flags.items():
        flag, help_text = "--" + name.replace("_", "-"), f"{text} (env {CLIENT_ENV[name]})"
        if name == "tls":
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        elif name == "tls_server_name":
            group.add_argument(flag, help=help_text)
        else:
            group.add_argument(flag, type=Path, help=help_text)


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The flags with each unset one taken from its ``CLIENT_ENV`` variable."""
    env = os.environ if env is None else env
    values = dict(vars(args))
    for name, var in CLIENT_ENV.items():
        raw = env.get(var, "").strip()
        if values.get(name) or not raw:
            continue
        try:
            values[name] = parse_bool(raw) if name == "tls" else raw
        except ValueError as exc:
            raise ClientSetupError(f"{var}: {exc}") from None
        if name in ("tls_ca", "tls_cert", "tls_key", "token_file"):
            values[name] = Path(raw)
    return argparse.Namespace(**values)


def connection_defaults() -> argparse.Namespace:
    """The flags' defaults: plaintext, the token from ``TAILRANK_TOKEN`` if set."""
    parser = argparse.ArgumentParser(add_help=False)
    add_connection_flags(parser)
    return parser.parse_args([])


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientSetupError(f"cannot read the {what} {path}: {exc.strerror}") from None


def read_token(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> str | None:
    """The token from ``--token-file``, else ``TAILRANK_TOKEN``, else None."""
    env = os.environ if env is None else env
    if args.token_file is not None:
        token = _read(args.token_file, "token file").decode("utf-8", "replace").strip()
        if not token:
            raise ClientSetupError(f"the token file {args.token_file} is empty")
        return token
    return env.get(TOKEN_ENV, "").strip() or None


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from the flags; None for plaintext."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ClientSetupError("--tls-cert and --tls-key go together (the client's mTLS pair)")
    if not (args.tls or args.tls_ca or args.tls_cert):
        if args.tls_server_name:
            raise ClientSetupError("--tls-server-name needs TLS: add --tls or --tls-ca")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca, "CA file") if args.tls_ca else None,
        private_key=_read(args.tls_key, "client key") if args.tls_key else None,
        certificate_chain=_read(args.tls_cert, "client certificate") if args.tls_cert else None,
    )


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:  # never the token
        return "BearerToken(<redacted>)"

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _Details(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


_DETAILS = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")


class _Details(collections.namedtuple("_Details", _DETAILS), grpc.ClientCallDetails):
    """A call's details with the token added (gRPC's interceptor example does the same)."""


def open_channel(
    target: str, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> grpc.Channel:
    """A channel to ``target`` as the connection flags say (plaintext, TLS, mTLS; token),
    unset flags from the environment; ``args`` None: ``connection_defaults()``."""
    args = resolve(args or connection_defaults(), env)
    credentials = channel_credentials(args)
    token = read_token(args, env)
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        options = []
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        channel = grpc.secure_channel(target, credentials, options=options)
    if token is not None:
        channel = grpc.intercept_channel(channel, BearerToken(token))
    return channel
