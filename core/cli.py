"""CLI plumbing shared by every ``python -m`` entry point: logging set-up, the exit-code
rule, and the one parser for true/false words (flags and ``TAILRANK_*`` variables)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` in any case; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}, got {text!r}")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with ``verbose``)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


def run_cli(
    body: Callable[[], object],
    bad_input: tuple[type[BaseException], ...],
    unavailable: tuple[type[BaseException], ...] = (),
    service: str = "a store or service",
) -> int:
    """Run a CLI's work and turn its outcome into the exit code every tailrank CLI uses.

    0: done (a returned string is printed); 2: bad input or settings (``bad_input``: the
    message says what to fix, no traceback, nothing written); 1: ``service`` could not be
    reached (``unavailable``). A failure is reported once, as one ``error:`` line on
    stderr; ``service`` names what was unreachable (never with a password).
    """
    try:
        result = body()
    except bad_input as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except unavailable as exc:
        print(f"error: cannot reach {service}: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result)
    return 0
