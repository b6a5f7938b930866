"""Command-line client: call Rank and print the ranked list (with titles when known).

    python -m serving.client --target localhost:50051 --user 1 --candidates 1,2,3 --top-k 2
    python -m serving.client --user 1 --candidates-from-file ids.txt --explain

The API returns ids only. ``--titles feature_repo/data/<name>`` prints titles read from the
data set's item feature file (the Parquet source Feast materialized from: no Feast import,
so the call answers in well under a second); ``--repo`` reads them from the online store
instead (it loads Feast: seconds, but it sees items written there since). Every call has
a deadline (``--timeout-s``). TLS, mTLS and the bearer token: ``--tls-ca``,
``--tls-cert``/``--tls-key``, ``--token-file`` or ``TAILRANK_TOKEN`` (serving.clientconn).

    python -m serving.client --target rank.internal:50051 --tls-ca ca.pem \
        --token-file svc-a.token --user 1 --candidates 1,2,3
    python -m serving.client upsert --target localhost:50051 new_items.csv  # UpsertItems
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.clientconn import ClientSetupError, add_connection_flags, open_channel

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description="Call tailrank's Rank and print the list "
        "(`python -m serving.client upsert --help`: send items to UpsertItems).",
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
    titles = parser.add_mutually_exclusive_group()
    titles.add_argument(
        "--titles",
        type=Path,
        help="features folder (feature_repo/data/<name>) or item_features.parquet to read "
        "item titles from (fast)",
    )
    titles.add_argument(
        "--repo", type=Path, help="Feast repo whose online store to read titles from (slow)"
    )
    parser.add_argument("--timeout-s", type=float, default=5.0, help="deadline of the call")
    add_connection_flags(parser)
    return parser


def read_candidates(args: argparse.Namespace) -> list[str]:
    """Candidate ids from --candidates or --candidates-from-file (blank lines skipped)."""
    if args.candidates is not None:
        return [c.strip() for c in args.candidates.split(",") if c.strip()]
    lines = args.candidates_from_file.read_text().splitlines()
    return [line.strip() for line in lines if line.strip()]


def rank(
    target: str,
    request: ranking_pb2.RankRequest,
    timeout_s: float,
    connection: argparse.Namespace | None = None,
):
    """One Rank call with a deadline, over the channel the connection flags describe
    (None: plaintext, the token from ``TAILRANK_TOKEN`` if set)."""
    with open_channel(target, connection) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        return stub.Rank(request, timeout=timeout_s)


def titles_from_file(path: Path, ids: Sequence[str]) -> dict[str, str]:
    """Titles of ``ids`` from the data set's item feature file (a folder or the file)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from core import schema

    file = path / schema.ITEM_FEATURES_FILE if path.is_dir() else path
    if not ids or not file.is_file():
        if ids:
            log.warning("no %s: run `make features` or pass --titles <features folder>", file)
        return {}
    table = pq.read_table(file, columns=[schema.ITEM_ID, schema.TITLE])
    table = table.filter(
        pc.is_in(table[schema.ITEM_ID], value_set=pa.array(list(ids), pa.string()))
    )
    rows = zip(table[schema.ITEM_ID].to_pylist(), table[schema.TITLE].to_pylist(), strict=True)
    return {str(i): t for i, t in rows if t}


def titles_from_store(repo: Path, ids: Sequence[str]) -> dict[str, str]:
    """Titles of ``ids`` from the online store (FEAST_FS_YAML_FILE_PATH names the config)."""
    if not ids:
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
        if item.because:
            named = (f"{titles.get(b.item_id) or b.item_id} ({b.weight:.2f})" for b in item.because)
            lines.append(f"       because of: {'; '.join(named)}")
    for miss in response.unscored:
        lines.append(f"unscored: {miss.item_id} ({miss.reason})")
    return "\n".join(lines)


def build_upsert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client upsert",
        description="Send catalogue items to UpsertItems from CSV/TSV/Parquet files: column "
        "item_id, text columns of the shop's items table (title, brand, category, "
        "description...) and numeric ones (year, price...); empty cells are left out. "
        "Each batch is written whole or not at all.",
    )
    parser.add_argument("files", nargs="+", type=Path, help=".csv, .tsv or .parquet files")
    parser.add_argument("--target", default="localhost:50051", help="server host:port")
    parser.add_argument("--batch", type=int, default=500, help="items per call (1-1000)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="deadline of each call")
    add_connection_flags(parser)
    return parser


def read_items(path: Path):  # -> pd.DataFrame
    """An items file with ``item_id`` read as strings."""
    import pandas as pd  # here, not at the top: a Rank call must not pay for it

    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        frame = pd.read_csv(path, sep=sep, dtype={"item_id": str}, keep_default_na=False,
                            na_values=[""])  # fmt: skip
    if "item_id" not in frame.columns:
        raise ValueError(f"{path}: no item_id column (columns: {list(frame.columns)})")
    return frame


def upsert_messages(frame) -> list[ranking_pb2.ItemUpsert]:
    """One ItemUpsert per row of a DataFrame: number columns -> numeric, the others -> text."""
    import pandas as pd

    numeric = [
        c for c in frame.columns if c != "item_id" and pd.api.types.is_numeric_dtype(frame[c])
    ]
    text = [c for c in frame.columns if c != "item_id" and c not in numeric]
    out = []
    for row in frame.to_dict("records"):
        out.append(
            ranking_pb2.ItemUpsert(
                item_id=str(row["item_id"]),
                text={c: str(row[c]) for c in text if isinstance(row[c], str) and row[c]},
                numeric={c: float(row[c]) for c in numeric if not pd.isna(row[c])},
            )
        )
    return out


def upsert_main(argv: Sequence[str]) -> int:
    """``upsert``: send the files' items in batches; on a refused batch, stop and say which
    rows were written (every earlier batch) and which were not."""
    args = build_upsert_parser().parse_args(argv)
    if not 1 <= args.batch <= 1000:
        print(f"error: --batch is {args.batch}: use 1 to 1000", file=sys.stderr)
        return 2
    try:
        items = [m for path in args.files for m in upsert_messages(read_items(path))]
        channel = open_channel(args.target, args)
    except (ClientSetupError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    created = updated = 0
    with channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for start in range(0, len(items), args.batch):
            batch = items[start : start + args.batch]
            try:
                reply = stub.UpsertItems(
                    ranking_pb2.UpsertItemsRequest(items=batch), timeout=args.timeout_s
                )
            except grpc.RpcError as exc:
                print(
                    f"error: items {start}-{start + len(batch) - 1} not written "
                    f"({exc.code().name}: {exc.details()}); items 0-{start - 1} were "
                    f"({created} created, {updated} updated): fix and resend from item {start}",
                    file=sys.stderr,
                )
                return 1
            created, updated = created + reply.created, updated + reply.updated
    print(f"upserted {created + updated} items ({created} created, {updated} updated)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["upsert"]:
        return upsert_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    request = ranking_pb2.RankRequest(
        user_id=args.user, candidate_ids=read_candidates(args), top_k=args.top_k,
        explain=args.explain,
    )  # fmt: skip
    if args.tail_weight is not None:
        request.tail_weight = args.tail_weight
    try:
        response = rank(args.target, request, args.timeout_s, args)
    except ClientSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    ids = [i.item_id for i in response.items]
    ids += [b.item_id for i in response.items for b in i.because]  # their titles too
    titles = {}
    if args.titles is not None:
        titles = titles_from_file(args.titles, ids)
    elif args.repo is not None:
        titles = titles_from_store(args.repo, ids)
    print(format_response(response, titles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
