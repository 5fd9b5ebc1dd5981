#!/usr/bin/env python3
"""Generates the Python messages and stubs of every sagaflow contract from ../../proto.

    python3 clients/python/generate.py [OUT_DIR]     # default: clients/python/gen

The output is not committed: `proto/` is the contract, and generating takes a second with the
pinned grpcio-tools of requirements.txt (a committed copy could silently drift from `proto/`).
Imports look like `from sagaflow.order.v1 import order_pb2, order_pb2_grpc`, with OUT_DIR on
`sys.path`. Exits non-zero when protoc reports an error.
"""

import pathlib
import shutil
import sys

import grpc_tools
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"


def main() -> int:
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "gen"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    if not files:
        print(f"no .proto files under {PROTO}", file=sys.stderr)
        return 1
    # grpc_tools ships the well-known types (google/protobuf/*.proto) the contracts import.
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    if code != 0:
        print(f"protoc failed with {code}", file=sys.stderr)
        return code
    print(f"generated {len(files)} contracts into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
