"""The server's transport and caller checks: TLS / mTLS credentials and the token check.

``Security.from_config(config)`` reads and checks every file the config names before the
server loads anything else (a missing certificate, a key that is not the certificate's,
an unreadable token file, a bad hash line: ConfigError, exit 2), so the server never
starts half-configured. ``bind`` adds the listening port, TLS when configured;
``interceptors`` is the token check (none when tokens are off).

Certificates reload without a restart: ``reload`` (SIGHUP) reads the files again and, when
they are good, hands the new pair to gRPC through the fetch callback of
``grpc.dynamic_ssl_server_credentials``, which gRPC calls at each new TLS handshake, so
every connection made after the reload sees the new certificate while open connections
keep theirs. Bad files on reload keep the certificate in use (logged, counted in
``tailrank_security_reloads_total``). Tokens reload the same way (serving.auth).
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving import metrics
from serving.auth import AuthInterceptor, TokenTable
from serving.config import ServerConfig, is_loopback
from serving.errors import ConfigError

log = logging.getLogger(__name__)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path} ({exc.strerror}): fix {flag}") from None


def _encrypted_key() -> str:
    raise ConfigError("the TLS key is encrypted: gRPC needs it unencrypted (file mode 0600)")


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 (hex) of the first certificate of a PEM file (the leaf of a chain)."""
    block = _PEM_CERT.search(cert_pem)
    if block is None:
        return "-"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(block.group().decode("ascii"))).hexdigest()


@dataclass(frozen=True)
class CertPair:
    """PEM bytes of a checked certificate chain and its key, and the client CA (mTLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    fingerprint: str  # SHA-256 of the leaf certificate (DER), as `openssl x509 -fingerprint`

    @classmethod
    def read(cls, cert: Path, key: Path, client_ca: Path | None) -> CertPair:
        """Read and check the files: each readable PEM, the key the certificate's own."""
        cert_pem = _read(cert, "TLS certificate", "--tls-cert")
        key_pem = _read(key, "TLS key", "--tls-key")
        ca_pem = _read(client_ca, "client CA", "--tls-client-ca") if client_ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key, password=_encrypted_key)
        except ssl.SSLError as exc:
            problem = (
                "the key does not belong to the certificate"
                if "KEY_VALUES_MISMATCH" in str(exc)
                else "not a PEM certificate chain and PEM private key"
            )
            raise ConfigError(
                f"--tls-cert {cert} / --tls-key {key}: {problem} ({exc.reason}): "
                "give the certificate and the key it was issued for"
            ) from None
        if client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(client_ca))
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"--tls-client-ca {client_ca}: no PEM CA certificate in it ({exc.reason})"
                ) from None
        return cls(cert_pem, key_pem, ca_pem, fingerprint(cert_pem))

    def grpc_config(self):
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.client_ca
        )


class ServerTls:
    """Server credentials whose certificate a ``reload`` replaces for new connections."""

    def __init__(self, config: ServerConfig) -> None:
        assert config.tls_cert is not None and config.tls_key is not None
        self.files = (config.tls_cert, config.tls_key, config.tls_client_ca)
        self.mutual = config.tls_client_ca is not None
        self.current = CertPair.read(*self.files)
        self._pending = None
        self._lock = threading.Lock()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self.current.grpc_config(), self._fetch, require_client_authentication=self.mutual
        )

    def _fetch(self):
        """gRPC's callback at each handshake: a new configuration once, else None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Read the files again; new connections get them. Bad files keep the old ones."""
        try:
            pair = CertPair.read(*self.files)
        except ConfigError as exc:
            metrics.SECURITY_RELOADS.labels("tls", "error").inc()
            log.error("event=tls_reload_failed error=%s (keeping the certificate in use)", exc)
            return False
        with self._lock:
            self._pending = pair.grpc_config()
            self.current = pair
        metrics.SECURITY_RELOADS.labels("tls", "ok").inc()
        log.info("event=tls_reloaded sha256=%s mtls=%s", pair.fingerprint, self.mutual)
        return True


@dataclass
class Security:
    """What a server process checks: TLS (None: plaintext) and tokens (None: off)."""

    tls: ServerTls | None
    auth: AuthInterceptor | None

    @staticmethod
    def check(config: ServerConfig) -> None:
        """Read and check every file the config names, creating no gRPC object (the
        supervisor checks before starting workers, and keeps gRPC out of its process)."""
        if config.tls_cert is not None and config.tls_key is not None:
            CertPair.read(config.tls_cert, config.tls_key, config.tls_client_ca)
        if config.auth_enabled:
            TokenTable.from_config(config)

    @classmethod
    def from_config(cls, config: ServerConfig) -> Security:
        """Read every file the config names; ConfigError saying what to fix."""
        tls = ServerTls(config) if config.tls_cert is not None else None
        auth = AuthInterceptor(config) if config.auth_enabled else None
        if tls is not None:
            log.info("event=tls_loaded sha256=%s mtls=%s", tls.current.fingerprint, tls.mutual)
        if not is_loopback(config.host):
            if tls is None:
                log.warning("event=plaintext host=%s (--insecure): no TLS", config.host)
            if auth is None:
                log.warning(
                    "event=auth_off host=%s: anyone who reaches the port can rank and send "
                    "feedback (set --auth-tokens-file)",
                    config.host,
                )  # fmt: skip
        return cls(tls, auth)

    @property
    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [self.auth] if self.auth is not None else []

    def bind(self, server: grpc.Server, address: str) -> int:
        """Add the listening port (TLS when configured); the port bound, 0 on failure."""
        if self.tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.tls.credentials)

    def reload(self) -> None:
        """SIGHUP: certificates and tokens again, each kept as it was when its files are bad."""
        if self.tls is not None:
            self.tls.reload()
        if self.auth is not None:
            self.auth.reload()
