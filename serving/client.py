"""Command-line client: call Rank and print the ranked list (with titles when known).

    python -m serving.client --target localhost:50051 --user 1 --candidates 1,2,3 --top-k 2
    python -m serving.client --user 1 --candidates-from-file ids.txt --explain

Titles come from the feature repo's online store when ``--repo`` points at it (the API
itself returns ids only). Every call has a deadline (``--timeout-s``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client", description="Call tailrank's Rank and print the list."
    )
    parser.add_argument("--target", default="localhost:50051", help="server host:port")
    parser.add_argument("--user", required=True, help="user id to rank for")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--candidates", help="comma-separated candidate item ids")
    group.add_argument(
        "--candidates-from-file", type=Path, help="file with one candidate id per line"
    )
    parser.add_argument("--top-k", type=int, default=10, help="items to return; 0 = all")
    parser.add_argument("--tail-weight", type=float, help="override the server's tail weight")
    parser.add_argument("--explain", action="store_true", help="print the parts of each score")
    parser.add_argument("--repo", type=Path, help="Feast repo to read item titles from")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="deadline of the call")
    return parser


def read_candidates(args: argparse.Namespace) -> list[str]:
    """Candidate ids from --candidates or --candidates-from-file (blank lines skipped)."""
    if args.candidates is not None:
        return [c.strip() for c in args.candidates.split(",") if c.strip()]
    lines = args.candidates_from_file.read_text().splitlines()
    return [line.strip() for line in lines if line.strip()]


def rank(target: str, request: ranking_pb2.RankRequest, timeout_s: float):
    """One Rank call with a deadline."""
    with grpc.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        return stub.Rank(request, timeout=timeout_s)


def titles_for(repo: Path | None, ids: Sequence[str]) -> dict[str, str]:
    """Item titles from the online store; empty when no repo is given or it has none."""
    if repo is None or not ids:
        return {}
    from feast import FeatureStore

    from core import schema

    store = FeatureStore(repo_path=str(repo))
    ref = f"{schema.ITEM_VIEW}:{schema.TITLE}"
    rows = store.get_online_features([ref], {schema.ITEM_ID: list(ids)}).to_dict()
    return {i: t for i, t in zip(rows[schema.ITEM_ID], rows[schema.TITLE], strict=True) if t}


def format_response(response: ranking_pb2.RankResponse, titles: dict[str, str]) -> str:
    """The ranked list as a small table, then the unscored items."""
    head = f"model {response.model_version}  request {response.request_id}"
    head += f"  tail_weight {response.tail_weight:.2f}"
    head += "  (cold user)" if response.cold_user else ""
    lines = [head, f"{'#':>3}  {'item':<12} {'score':>7} {'p(click)':>8} tail  title"]
    for pos, item in enumerate(response.items, start=1):
        tail = "yes" if item.is_tail else "no"
        lines.append(
            f"{pos:>3}  {item.item_id:<12} {item.score:7.4f} {item.click_probability:8.4f}"
            f" {tail:<4}  {titles.get(item.item_id, '')}"
        )
        if item.explanation:
            parts = ", ".join(f"{k}={v:.4g}" for k, v in sorted(item.explanation.items()))
            lines.append(f"       {parts}")
    for miss in response.unscored:
        lines.append(f"unscored: {miss.item_id} ({miss.reason})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    request = ranking_pb2.RankRequest(
        user_id=args.user, candidate_ids=read_candidates(args), top_k=args.top_k,
        explain=args.explain,
    )  # fmt: skip
    if args.tail_weight is not None:
        request.tail_weight = args.tail_weight
    try:
        response = rank(args.target, request, args.timeout_s)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    titles = titles_for(args.repo, [i.item_id for i in response.items])
    print(format_response(response, titles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
