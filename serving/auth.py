"""Bearer tokens: the token hash lines, and the server interceptor that checks each call.

A token is a random secret (``python -m serving.tokens new``) that only its client holds.
The server holds its SHA-256 hash in one line per token::

    sha256:<64 hex digits> <scope>[,<scope>...] <name>

from ``--auth-tokens-file`` (``#`` comments and blank lines allowed) and/or
``--auth-tokens`` (the same lines in one value, separated by ``;`` or newlines). Scopes:
``rank`` (RankingService/Rank), ``feedback`` (RankingService/Feedback) and ``upsert``
(RankingService/UpsertItems).

``AuthInterceptor`` reads ``authorization: Bearer <token>`` from each call's metadata,
hashes the token and compares the digest with every known hash (``hmac.compare_digest``,
no early exit), then answers UNAUTHENTICATED (no token, or an unknown one),
PERMISSION_DENIED (a known token without the method's scope) or runs the call. Health and
reflection can be open (``--auth-open-health``, on by default, so load balancers need no
token; ``--auth-open-reflection``); closed, they take any valid token. A method no scope
names (a new RPC, an unknown path) takes no token at all: it is denied, fail closed.
No token ever reaches a log line or an error message; token names do.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving import metrics
from serving.api.tailrank.v1 import ranking_pb2
from serving.config import ServerConfig
from serving.errors import ConfigError

log = logging.getLogger(__name__)

SCOPES = ("rank", "feedback", "upsert")
_SERVICE = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"]
_SCOPE_OF = {"Rank": "rank", "Feedback": "feedback", "UpsertItems": "upsert"}
# a method missing here has no scope: denied to every token (fail closed)
METHOD_SCOPES = {
    f"/{_SERVICE.full_name}/{m.name}": _SCOPE_OF[m.name]
    for m in _SERVICE.methods
    if m.name in _SCOPE_OF
}
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."  # v1alpha and v1
HASH_PREFIX = "sha256:"
TOKEN_PREFIX = "trk_"  # new tokens start with it: easy to spot in a secret scanner
MAX_TOKEN_CHARS = 1024  # longer authorization values are refused before hashing
_NAME = re.compile(r"[A-Za-z0-9._@:-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
LINE_FORMAT = "sha256:<64 hex digits> <scopes, comma-separated> <name>"


@dataclass(frozen=True)
class TokenEntry:
    """One accepted token: the SHA-256 digest of the token, its scopes and its name."""

    digest: bytes
    scopes: frozenset[str]
    name: str

    def line(self) -> str:
        """The hash line this entry is read from."""
        scopes = ",".join(s for s in SCOPES if s in self.scopes)
        return f"{HASH_PREFIX}{self.digest.hex()} {scopes} {self.name}"


def new_token() -> str:
    """A fresh random token: ``trk_`` and 256 random bits, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes (what a hash line holds, in hex)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_scopes(text: str) -> frozenset[str]:
    """``rank,feedback`` -> a set of known scopes; ConfigError naming an unknown one."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        shown = ", ".join(repr(s[:20]) for s in unknown) or "none"
        raise ConfigError(f"scopes must be a comma-separated list of {', '.join(SCOPES)}: {shown}")
    return frozenset(scopes)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            "a token name is 1 to 64 characters of letters, digits and . _ @ : - "
            f"(it names the caller in logs), got {name[:70]!r}"
        )
    return name


def entry_for(token: str, scopes: Iterable[str], name: str) -> TokenEntry:
    """The entry (hash line) that accepts ``token`` for ``scopes``."""
    return TokenEntry(token_digest(token), parse_scopes(",".join(scopes)), check_name(name))


def parse_line(line: str, where: str) -> TokenEntry:
    """One hash line -> TokenEntry. The error says what to fix and never repeats the line
    (a raw token pasted there by mistake must not reach a log)."""
    fields = line.split()
    if len(fields) != 3:
        raise ConfigError(
            f"{where}: expected 3 fields, {LINE_FORMAT}, got {len(fields)} "
            "(`python -m serving.tokens new` prints such lines)"
        )
    hashed, scopes, name = fields
    hex_part = hashed.removeprefix(HASH_PREFIX).lower()
    if not hashed.startswith(HASH_PREFIX) or not _HEX.fullmatch(hex_part):
        raise ConfigError(
            f"{where}: the first field must be sha256:<64 hex digits>, the token's hash; "
            "the server never holds a token itself (`python -m serving.tokens hash` turns "
            "a token into its line)"
        )
    try:
        return TokenEntry(bytes.fromhex(hex_part), parse_scopes(scopes), check_name(name))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_lines(lines: Iterable[str], source: str) -> list[TokenEntry]:
    """Every hash line of ``lines`` (blank and ``#`` lines skipped), numbered from 1."""
    entries = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append(parse_line(line, f"{source} line {number}"))
    return entries


def read_tokens_file(path: Path) -> list[TokenEntry]:
    """The hash lines of a token file; ConfigError when it is missing or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the token file {path} ({type(exc).__name__}: "
            f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}): fix --auth-tokens-file"
        ) from None
    return parse_lines(text.splitlines(), str(path))


@dataclass(frozen=True)
class TokenTable:
    """The accepted tokens: what a config's file and lines hold, checked together."""

    entries: tuple[TokenEntry, ...]

    @classmethod
    def from_config(cls, config: ServerConfig) -> TokenTable:
        """Read ``auth_tokens_file`` and ``auth_tokens``; ConfigError on any bad line, on
        a hash given twice, or on no token at all (auth on, nobody could call)."""
        entries: list[TokenEntry] = []
        if config.auth_tokens_file is not None:
            entries += read_tokens_file(config.auth_tokens_file)
        if config.auth_tokens:
            entries += parse_lines(re.split(r"[;\n]", config.auth_tokens), "TAILRANK_AUTH_TOKENS")
        if not entries:
            raise ConfigError(
                "token authentication is on but no token hash line was found in "
                "--auth-tokens-file / --auth-tokens: add one (`python -m serving.tokens new`)"
            )
        seen: dict[bytes, str] = {}
        for entry in entries:
            if entry.digest in seen:
                raise ConfigError(
                    f"tokens {seen[entry.digest]!r} and {entry.name!r} have the same hash: "
                    "keep one line per token"
                )
            seen[entry.digest] = entry.name
        return cls(tuple(entries))

    def find(self, token: str) -> TokenEntry | None:
        """The entry of ``token``, comparing its digest with every entry in constant time
        (no early exit: the time taken does not say which entry, or how much, matched)."""
        digest = token_digest(token)
        found = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry
        return found


def bearer_token(metadata: Iterable[tuple[str, object]] | None) -> str | None:
    """The token of the first ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        if not isinstance(value, str):
            return None
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return token
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks every call's bearer token against a TokenTable (see the module doc)."""

    def __init__(self, config: ServerConfig, table: TokenTable | None = None) -> None:
        self.config = config
        self.table = table or TokenTable.from_config(config)
        self._reloading = threading.Lock()
        log.info("event=auth_tokens_loaded tokens=%d", len(self.table.entries))

    def reload(self) -> bool:
        """Read the tokens again (SIGHUP); a bad file keeps the tokens in use, logged."""
        with self._reloading:
            try:
                table = TokenTable.from_config(self.config)
            except ConfigError as exc:
                metrics.SECURITY_RELOADS.labels("tokens", "error").inc()
                log.error("event=auth_reload_failed error=%s (keeping the tokens in use)", exc)
                return False
            self.table = table  # one reference assignment: a call sees the old or the new
        metrics.SECURITY_RELOADS.labels("tokens", "ok").inc()
        log.info("event=auth_tokens_loaded tokens=%d", len(table.entries))
        return True

    def decide(self, method: str, metadata) -> tuple[grpc.StatusCode, str] | None:
        """None to let the call through, else (status, message) to refuse it with."""
        if method.startswith(HEALTH_PREFIX) and self.config.auth_open_health:
            return None
        if method.startswith(REFLECTION_PREFIX) and self.config.auth_open_reflection:
            return None
        token = bearer_token(metadata)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                "send the metadata 'authorization: Bearer <token>' (docs/SECURITY.md)"
            )
        entry = self.table.find(token)
        if entry is None:
            return grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token"
        if method.startswith((HEALTH_PREFIX, REFLECTION_PREFIX)):
            return None  # closed health and reflection: any valid token
        scope = METHOD_SCOPES.get(method)
        if scope is None or scope not in entry.scopes:
            return grpc.StatusCode.PERMISSION_DENIED, (
                f"token {entry.name!r} lacks the scope {scope or 'for this method'!r} "
                f"(it has {', '.join(sorted(entry.scopes))})"
            )
        return None

    def intercept_service(self, continuation: Callable, handler_call_details):
        method = handler_call_details.method or ""
        try:
            refusal = self.decide(method, handler_call_details.invocation_metadata)
        except Exception as exc:  # never let a caller's metadata take a thread down
            log.error("event=auth_error method=%s error=%s", method, type(exc).__name__)
            refusal = grpc.StatusCode.UNAUTHENTICATED, "could not check the token"
        handler = continuation(handler_call_details)
        if refusal is None or handler is None:
            return handler
        return _refusing(handler, method, *refusal)


def _refusing(handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode, message: str):
    """A handler of the same kind as ``handler`` that refuses the call with ``code``."""

    def refuse(_request, context: grpc.ServicerContext):
        metrics.AUTH_REFUSED.labels(method.rsplit("/", 1)[-1], code.name).inc()
        log.warning(
            "event=auth_refused method=%s code=%s peer=%s message=%r",
            method, code.name, context.peer(), message,
        )  # fmt: skip
        context.abort(code, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
