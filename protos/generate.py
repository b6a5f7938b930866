"""Generate the Python gRPC stubs for protos/ into serving/api/ (checked in).

    python protos/generate.py            # regenerate in place
    python protos/generate.py --check    # exit 1 if the checked-in stubs are stale

The proto tree is mounted at the virtual path ``serving/api`` so generated modules import
each other as ``serving.api.tailrank.v1...`` (see grpc/grpc#29459 on mirroring paths).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
VIRTUAL = "serving/api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev dependency, imported only when generating

    protos = sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in protos:
        args = [
            "protoc",
            f"-I{VIRTUAL}={PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"{VIRTUAL}/{proto.as_posix()}",
        ]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {proto}")


def _generated_files(base: Path) -> list[Path]:
    api = base / VIRTUAL
    return sorted(
        p.relative_to(base) for p in api.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if checked-in stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _generate(tmp_path)
        fresh = _generated_files(tmp_path)
        if args.check:
            stale = [
                str(f)
                for f in fresh
                if not (ROOT / f).exists() or not filecmp.cmp(tmp_path / f, ROOT / f, shallow=False)
            ]
            stale += [str(f) for f in _generated_files(ROOT) if f not in fresh]
            if stale:
                sys.exit("stale generated stubs, run `make protos`: " + ", ".join(stale))
            print(f"protos: {len(fresh)} generated files up to date")
            return
        for f in fresh:
            (ROOT / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / f, ROOT / f)
        print(f"protos: wrote {len(fresh)} files under {VIRTUAL}/")


if __name__ == "__main__":
    main()
