"""Create bearer tokens and the hash lines the server checks them against.

    python -m serving.tokens new --scopes rank,feedback --name svc-a
    python -m serving.tokens new --scopes rank --name svc-b --token-out svc-b.token >> tokens
    python -m serving.tokens hash --scopes rank --name svc-c < svc-c.token >> tokens
    python -m serving.tokens check tokens

``new`` makes a random token (``trk_`` + 256 bits). Without ``--token-out`` it prints the
token and its hash line; with it, the token goes to that file (created with mode 0600,
never overwritten) and only the hash line is printed, ready to append to the server's
``--auth-tokens-file``. The token is shown once and stored nowhere else: give it to the
client (``python -m serving.client --token-file``), keep the line on the server. ``hash``
turns an existing token (read from stdin) into its line; ``check`` reads a token file as
the server would and lists its tokens' names and scopes. docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.cli import run_cli
from serving.auth import SCOPES, TokenTable, entry_for, new_token
from serving.config import ServerConfig
from serving.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.tokens",
        description="Create bearer tokens for tailrank and the hash lines the server keeps.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    scopes_help = f"comma-separated scopes the token grants: {', '.join(SCOPES)}"
    name_help = "who holds the token (shown in the server's logs), e.g. svc-a"
    new = commands.add_parser("new", help="make a token and print its hash line")
    new.add_argument("--scopes", required=True, help=scopes_help)
    new.add_argument("--name", required=True, help=name_help)
    new.add_argument(
        "--token-out",
        type=Path,
        help="write the token to this new file (mode 0600) and print only the hash line",
    )
    hashed = commands.add_parser("hash", help="print the hash line of a token read from stdin")
    hashed.add_argument("--scopes", required=True, help=scopes_help)
    hashed.add_argument("--name", required=True, help=name_help)
    check = commands.add_parser("check", help="read a token hash file as the server would")
    check.add_argument("file", type=Path, help="the server's --auth-tokens-file")
    return parser


def write_secret(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only; refuse to overwrite a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: choose a new file for the token") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def cmd_new(args: argparse.Namespace) -> str:
    token = new_token()
    line = entry_for(token, args.scopes.split(","), args.name).line()
    if args.token_out is not None:
        write_secret(args.token_out, token)
        return line
    return (
        f"token: {token}\n"
        "  (give it to the client, e.g. in a file for --token-file; it is not stored anywhere)\n"
        f"hash line (append it to the server's --auth-tokens-file):\n{line}"
    )


def cmd_hash(args: argparse.Namespace) -> str:
    token = sys.stdin.read().strip()
    if not token or len(token.split()) != 1:
        raise ConfigError("stdin must hold the token alone (one word, no spaces)")
    return entry_for(token, args.scopes.split(","), args.name).line()


def cmd_check(args: argparse.Namespace) -> str:
    entries = TokenTable.from_config(ServerConfig(auth_tokens_file=args.file)).entries
    lines = [f"{args.file}: {len(entries)} token(s)"]
    lines += [f"  {e.name}: {','.join(s for s in SCOPES if s in e.scopes)}" for e in entries]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"new": cmd_new, "hash": cmd_hash, "check": cmd_check}[args.command]
    return run_cli(lambda: command(args), bad_input=(ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
