"""TLS, mTLS and bearer tokens (serving.security, serving.auth, serving.clientconn,
serving.tokens; docs/SECURITY.md), on the real server over the tiny repo and model.

Certificates are made with the openssl command (tests/fixtures/tls.py). The in-process
servers share the session's servicer (``ranking_server``); the SIGHUP test runs
``python -m serving --processes 2`` so the supervisor's forwarding is covered too.

    pytest tests/test_serving_security.py
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving import client as client_cli
from serving import healthcheck
from serving import tokens as tokens_cli
from serving.__main__ import main as server_main
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.auth import METHOD_SCOPES, SCOPES, TokenTable, bearer_token, entry_for, new_token
from serving.clientconn import CLIENT_ENV, TOKEN_ENV, BearerToken
from serving.config import ServerConfig, is_loopback, load_config
from serving.errors import ConfigError
from serving.security import CertPair, Security
from serving.server import create_server
from serving.supervisor import supervise
from tests.fixtures.serving import RunningServer, serving_config
from tests.fixtures.tls import Cert, Pki
from tests.test_eventlog_serving import candidates
from tests.test_serving_shutdown import ROOT, free_port

TIMEOUT = 10.0
CODE = grpc.StatusCode


# --- certificates, tokens, servers ------------------------------------------------------
@dataclass
class Secrets:
    pki: Pki
    server: Cert
    server2: Cert  # the certificate the reload test switches to
    client: Cert  # signed by the server's client CA
    rogue: Cert  # a client certificate from another CA
    rogue_ca: Cert
    tokens: dict[str, str]  # name -> token
    tokens_file: Path


@pytest.fixture(scope="module")
def secrets_(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    folder = tmp_path_factory.mktemp("pki")
    pki, other = Pki(folder / "ca"), Pki(folder / "rogue", name="rogue-ca")
    tokens = {"svc-rank": new_token(), "svc-feedback": new_token(), "svc-all": new_token()}
    scopes = {"svc-rank": ["rank"], "svc-feedback": ["feedback"], "svc-all": list(SCOPES)}
    lines = ["# test tokens", *(entry_for(t, scopes[n], n).line() for n, t in tokens.items())]
    tokens_file = folder / "tokens"
    tokens_file.write_text("\n".join(lines) + "\n")
    return Secrets(
        pki, pki.issue("server-one"), pki.issue("server-two"), pki.issue("client-a"),
        other.issue("rogue-client"), other.ca, tokens, tokens_file,
    )  # fmt: skip


@dataclass
class Secure:
    """An in-process server with TLS (and mTLS when ``mutual``) and tokens."""

    port: int
    security: Security
    cands: list[str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _secure_server(
    running: RunningServer, secrets: Secrets, features_dir: Path, **tls: object
) -> Iterator[Secure]:
    config = serving_config(
        running.repo, running.model_dir, tls_cert=secrets.server.cert,
        tls_key=secrets.server.key, auth_tokens_file=secrets.tokens_file, **tls,
    )  # fmt: skip
    security = Security.from_config(config)
    server, port = create_server(config, running.servicer, security=security)
    try:
        yield Secure(port, security, candidates(Path(features_dir), 6))
    finally:
        server.stop(0).wait()


@pytest.fixture(scope="module")
def tls_server(ranking_server, secrets_, tiny_features_dir) -> Iterator[Secure]:
    """TLS (no client certificate asked) and tokens."""
    yield from _secure_server(ranking_server, secrets_, tiny_features_dir)


@pytest.fixture(scope="module")
def mtls_server(ranking_server, secrets_, tiny_features_dir) -> Iterator[Secure]:
    """TLS that requires a client certificate signed by the test CA, and tokens."""
    yield from _secure_server(
        ranking_server, secrets_, tiny_features_dir, tls_client_ca=secrets_.pki.ca.cert
    )


def channel(
    target: str, ca: Path | None, client: Cert | None = None, token: str | None = None
) -> grpc.Channel:
    """A fresh connection (no shared subchannel) as a client would open it."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    if ca is None:
        ch = grpc.insecure_channel(target, options=options)
    else:
        creds = grpc.ssl_channel_credentials(
            ca.read_bytes(),
            client.key.read_bytes() if client else None,
            client.cert.read_bytes() if client else None,
        )
        ch = grpc.secure_channel(target, creds, options=options)
    if token is not None:
        ch = grpc.intercept_channel(ch, BearerToken(token))
    return ch


def rank(ch: grpc.Channel, cands: list[str]) -> ranking_pb2.RankResponse:
    stub = ranking_pb2_grpc.RankingServiceStub(ch)
    return stub.Rank(ranking_pb2.RankRequest(user_id="u1", candidate_ids=cands), timeout=TIMEOUT)


def feedback(ch: grpc.Channel) -> ranking_pb2.FeedbackResponse:
    stub = ranking_pb2_grpc.RankingServiceStub(ch)
    return stub.Feedback(ranking_pb2.FeedbackRequest(), timeout=TIMEOUT)


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return CODE.OK


def peer_certificate(port: int, ca: Path) -> bytes:
    """The DER certificate a new TLS connection to ``port`` is shown (ALPN h2, as gRPC)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


# --- configuration: fast, no server -----------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("[::1]", True), ("::1", True),
     ("localhost", True), ("0.0.0.0", False), ("[::]", False), ("10.0.0.5", False),
     ("rank.internal", False)],
)  # fmt: skip
def test_plaintext_off_loopback_needs_insecure(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        assert load_config(["--host", host], env={}).host == host
        return
    with pytest.raises(ConfigError, match="not a loopback address.*--tls-cert.*--insecure"):
        load_config(["--host", host], env={})
    assert load_config(["--host", host, "--insecure"], env={}).insecure
    assert load_config([], env={"TAILRANK_HOST": host, "TAILRANK_INSECURE": "true"}).insecure
    tls = load_config(["--host", host, "--tls-cert", "c.pem", "--tls-key", "k.pem"], env={})
    assert tls.tls_cert == Path("c.pem")  # TLS: no --insecure needed


def test_default_host_is_loopback_and_tls_settings_go_together() -> None:
    assert is_loopback(ServerConfig().host)
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_config(["--tls-cert", "c.pem"], env={})
    with pytest.raises(ConfigError, match="tls_client_ca .* needs server TLS"):
        load_config(["--tls-client-ca", "ca.pem"], env={})


def test_plaintext_on_all_interfaces_exits_2_before_loading_anything(capsys) -> None:
    assert server_main(["--host", "0.0.0.0", "--model", "/nonexistent"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing cert", "cannot read the TLS certificate .*fix --tls-cert"),
        ("missing key", "cannot read the TLS key .*fix --tls-key"),
        ("other key", "the key does not belong to the certificate"),
        ("not pem", "not a PEM certificate chain"),
        ("bad ca", "--tls-client-ca .*no PEM CA certificate"),
        ("token file missing", "cannot read the token file .*fix --auth-tokens-file"),
        ("token file empty", "no token hash line was found"),
        ("raw token", "line 2: the first field must be sha256:<64 hex digits>"),
        ("short line", "line 1: expected 3 fields"),
        ("bad scope", "line 1: scopes must be .*'admin'"),
        ("twice", "have the same hash"),
    ],
)
def test_bad_security_files_stop_start_up_saying_what_to_fix(
    secrets_: Secrets, tmp_path: Path, problem: str, message: str
) -> None:
    s, token = secrets_, new_token()
    line = entry_for(token, ["rank"], "svc").line()
    files = {"tls_cert": s.server.cert, "tls_key": s.server.key}
    tokens = tmp_path / "tokens"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    change = {
        "missing cert": {"tls_cert": tmp_path / "nope.pem"},
        "missing key": {"tls_key": tmp_path / "nope.key"},
        "other key": {"tls_key": s.client.key},
        "not pem": {"tls_cert": garbage, "tls_key": garbage},
        "bad ca": {"tls_client_ca": garbage},
        "token file missing": {"auth_tokens_file": tmp_path / "none"},
        "token file empty": {"auth_tokens_file": tokens},
        "raw token": {"auth_tokens_file": tokens},
        "short line": {"auth_tokens": "sha256:abc rank"},
        "bad scope": {"auth_tokens": line.replace(" rank ", " rank,admin ")},
        "twice": {"auth_tokens": f"{line};{line}"},
    }[problem]
    tokens.write_text({"raw token": f"{line}\n{token} rank svc-b\n"}.get(problem, "# none\n"))
    config = ServerConfig(**{**files, **change})
    with pytest.raises(ConfigError, match=message) as err:
        Security.from_config(config)
    assert token not in str(err.value)  # a token pasted by mistake is never echoed


def test_supervisor_checks_the_files_before_starting_a_worker(secrets_, tmp_path) -> None:
    config = load_config(
        ["--processes", "2", "--tls-cert", str(secrets_.server.cert), "--tls-key",
         str(secrets_.client.key), "--model", str(tmp_path / "none")], env={},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="the key does not belong to the certificate"):
        supervise(config)


def test_fingerprint_is_the_leafs_in_a_chain_file(secrets_: Secrets, tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"  # as `openssl pkcs12` exports it: text, leaf, then CA
    chain.write_text(
        "Bag Attributes\n" + secrets_.server.cert.read_text() + secrets_.pki.ca.cert.read_text()
    )
    pair = CertPair.read(chain, secrets_.server.key, None)
    assert pair.fingerprint == hashlib.sha256(secrets_.server.der).hexdigest()


def test_tokens_parse_and_compare() -> None:
    token = new_token()
    assert token.startswith("trk_") and len(token) > 40 and new_token() != token
    entry = entry_for(token, ["feedback", "rank"], "svc-a")
    assert entry.line().endswith(" rank,feedback svc-a") and token not in entry.line()
    table = TokenTable.from_config(ServerConfig(auth_tokens=f"# c\n{entry.line()}"))
    assert table.find(token) == entry and table.find(token + "x") is None
    assert bearer_token([("x", "y"), ("authorization", f"bearer  {token} ")]) == token
    for bad in ("Basic abc", "Bearer", "Bearer " + "a" * 2000, b"Bearer x"):
        assert bearer_token([("authorization", bad)]) is None
    assert set(METHOD_SCOPES.values()) == set(SCOPES)  # every RPC has a scope


def test_tokens_cli_new_hash_check(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "svc-a.token"
    assert tokens_cli.main(["new", "--scopes", "rank,feedback", "--name", "svc-a",
                            "--token-out", str(out)]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip()
    token = out.read_text().strip()
    assert out.stat().st_mode & 0o777 == 0o600 and token not in line
    assert line == entry_for(token, ["rank", "feedback"], "svc-a").line()
    assert tokens_cli.main(["new", "--scopes", "rank", "--name", "x", "--token-out", str(out)])
    assert "exists" in capsys.readouterr().err  # never overwrites a token file
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(token + "\n"))
    assert tokens_cli.main(["hash", "--scopes", "rank,feedback", "--name", "svc-a"]) == 0
    assert capsys.readouterr().out.strip() == line
    (tmp_path / "tokens").write_text(line + "\n")
    assert tokens_cli.main(["check", str(tmp_path / "tokens")]) == 0
    assert "svc-a: rank,feedback" in capsys.readouterr().out
    assert tokens_cli.main(["new", "--scopes", "rank", "--name", "svc-b"]) == 0
    shown = capsys.readouterr().out
    assert "token: trk_" in shown and "sha256:" in shown
    assert tokens_cli.main(["new", "--scopes", "admin", "--name", "svc-b"]) == 2


# --- TLS and mTLS on the real server ----------------------------------------------------
@pytest.mark.integration
def test_tls_handshake_serves_and_shows_the_configured_certificate(
    tls_server: Secure, secrets_: Secrets
) -> None:
    ca, token = secrets_.pki.ca.cert, secrets_.tokens["svc-all"]
    with channel(tls_server.target, ca, token=token) as ch:
        assert len(rank(ch, tls_server.cands).items) == len(tls_server.cands)
    assert peer_certificate(tls_server.port, ca) == secrets_.server.der
    with channel(tls_server.target, None, token=token) as ch:  # plaintext to a TLS port
        assert code_of(lambda: rank(ch, tls_server.cands)) == CODE.UNAVAILABLE
    with channel(tls_server.target, secrets_.rogue_ca.cert, token=token) as ch:  # untrusted
        assert code_of(lambda: rank(ch, tls_server.cands)) == CODE.UNAVAILABLE


@pytest.mark.integration
def test_mtls_refuses_a_client_without_a_certificate_from_the_ca(
    mtls_server: Secure, secrets_: Secrets
) -> None:
    ca, token, cands = secrets_.pki.ca.cert, secrets_.tokens["svc-rank"], mtls_server.cands
    with channel(mtls_server.target, ca, token=token) as ch:  # no client certificate
        assert code_of(lambda: rank(ch, cands)) == CODE.UNAVAILABLE
    with channel(mtls_server.target, ca, secrets_.rogue, token) as ch:  # another CA's
        assert code_of(lambda: rank(ch, cands)) == CODE.UNAVAILABLE
    with channel(mtls_server.target, ca, secrets_.client, token) as ch:
        assert len(rank(ch, cands).items) == len(cands)


@pytest.mark.integration
def test_client_and_healthcheck_clis_speak_mtls_with_a_token(
    mtls_server: Secure, secrets_: Secrets, tmp_path: Path, capsys, monkeypatch
) -> None:
    for var in (*CLIENT_ENV.values(), TOKEN_ENV):  # whatever the developer's shell has
        monkeypatch.delenv(var, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(secrets_.tokens["svc-rank"] + "\n")
    tls = ["--tls-ca", str(secrets_.pki.ca.cert), "--tls-cert", str(secrets_.client.cert),
           "--tls-key", str(secrets_.client.key), "--tls-server-name", "localhost"]  # fmt: skip
    argv = ["--target", mtls_server.target, "--user", "u1", "--candidates",
            ",".join(mtls_server.cands), *tls]  # fmt: skip
    assert client_cli.main([*argv, "--token-file", str(token_file)]) == 0
    assert mtls_server.cands[0] in capsys.readouterr().out
    assert client_cli.main(argv) == 1  # no token
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert healthcheck.main(["--target", mtls_server.target, *tls]) == 0  # health is open
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main(["--target", mtls_server.target, "--tls-ca", tls[1]]) == 1
    assert client_cli.main([*argv[:6], *tls[:4]]) == 2  # a client certificate without key
    assert "go together" in capsys.readouterr().err
    for name, value in zip(("CA", "CERT", "KEY", "SERVER_NAME"), tls[1::2], strict=True):
        monkeypatch.setenv(f"TAILRANK_CLIENT_TLS_{name}", value)  # as a container sets them
    assert healthcheck.main(["--target", mtls_server.target]) == 0
    monkeypatch.setenv("TAILRANK_TOKEN_FILE", str(token_file))
    assert client_cli.main(argv[:6]) == 0


# --- tokens on the real server ----------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize(
    ("who", "method", "code"),
    [
        (None, "rank", CODE.UNAUTHENTICATED),
        ("bogus", "rank", CODE.UNAUTHENTICATED),
        ("bogus", "feedback", CODE.UNAUTHENTICATED),
        ("svc-feedback", "rank", CODE.PERMISSION_DENIED),
        ("svc-rank", "feedback", CODE.PERMISSION_DENIED),
        ("svc-rank", "rank", CODE.OK),
        ("svc-all", "rank", CODE.OK),
        # past the token check: this server has no event log
        ("svc-feedback", "feedback", CODE.FAILED_PRECONDITION),
    ],
)
def test_token_scopes(tls_server: Secure, secrets_: Secrets, who, method, code) -> None:
    token = {None: None, "bogus": new_token()}[who] if who in (None, "bogus") else None
    token = token or secrets_.tokens.get(who)
    with channel(tls_server.target, secrets_.pki.ca.cert, token=token) as ch:
        call = {"rank": lambda: rank(ch, tls_server.cands), "feedback": lambda: feedback(ch)}
        assert code_of(call[method]) == code


@pytest.mark.integration
def test_health_is_open_and_reflection_takes_a_token(tls_server: Secure, secrets_) -> None:
    ca = secrets_.pki.ca.cert
    with channel(tls_server.target, ca) as ch:  # no token
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    def reflect(token: str | None) -> grpc.StatusCode:
        with channel(tls_server.target, ca, token=token) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            return code_of(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=5)))

    assert reflect(None) == CODE.UNAUTHENTICATED
    assert reflect(secrets_.tokens["svc-rank"]) == CODE.OK  # closed: any valid token


@pytest.mark.integration
def test_no_token_reaches_the_logs_or_the_caller(
    tls_server: Secure, secrets_: Secrets, caplog: pytest.LogCaptureFixture
) -> None:
    bogus = new_token()
    sent = [*secrets_.tokens.values(), bogus]
    caplog.set_level(logging.DEBUG)
    details = []
    for token in sent:
        for call in (lambda ch: rank(ch, tls_server.cands), feedback):
            with channel(tls_server.target, secrets_.pki.ca.cert, token=token) as ch:
                try:
                    call(ch)
                except grpc.RpcError as exc:
                    details.append(exc.details())
    tls_server.security.reload()  # the reload's log lines too
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records) + "\n".join(details)
    assert "event=auth_refused" in text and "event=auth_tokens_loaded" in text  # logs seen
    for token in sent:
        assert token not in text and token[4:20] not in text


# --- SIGHUP: new certificates without a restart, with --processes 2 ---------------------
@pytest.mark.integration
@pytest.mark.slow
def test_sighup_reloads_certificates_in_every_worker(
    tiny_feature_repo: Path, tiny_model_dir: Path, secrets_: Secrets, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(secrets_.server.cert, cert)
    shutil.copy(secrets_.server.key, key)
    port, log_path = free_port(), tmp_path / "server.log"
    argv = [sys.executable, "-m", "serving", "--processes", "2", "--repo",
            str(tiny_feature_repo), "--model", str(tiny_model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", "-1", "--workers", "2", "--no-event-log",
            "--tls-cert", str(cert), "--tls-key", str(key), "--auth-tokens-file",
            str(secrets_.tokens_file), "--log-level", "DEBUG"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ca, token = secrets_.pki.ca.cert, secrets_.tokens["svc-all"]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=log_file, env=env)
    try:
        wait_for(lambda: "event=ready processes=2" in log_path.read_text(), proc, log_path)
        assert peer_certificate(port, ca) == secrets_.server.der
        for src, dest in ((secrets_.server2.cert, cert), (secrets_.server2.key, key)):
            shutil.copy(src, dest.with_suffix(".new"))
            os.replace(dest.with_suffix(".new"), dest)  # as a secret mount swaps files
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: log_path.read_text().count("event=tls_reloaded") >= 2, proc, log_path
        )  # each worker
        # every new connection, whichever worker the kernel gives it to, sees the new one
        assert {peer_certificate(port, ca) for _ in range(12)} == {secrets_.server2.der}
        with channel(f"127.0.0.1:{port}", ca, token=token) as ch:
            assert rank(ch, ["x"]).unscored[0].item_id == "x"
        cert.write_text("garbage\n")  # a bad file on reload: the certificate in use stays
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_path.read_text().count("event=tls_reload_failed") >= 2, proc, log_path)
        assert peer_certificate(port, ca) == secrets_.server2.der
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert token not in log_path.read_text()


def wait_for(condition, proc: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"server exited: {log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out: {log_path.read_text()[-3000:]}"
        time.sleep(0.2)
