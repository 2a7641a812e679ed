"""Regenerate the Python code for ``protos/v1/*.proto`` (run ``make protos``; never edit the output).

protoc writes ``from v1 import inference_pb2``; the import is rewritten to the installed package path
``splitserve.protos.v1`` so the generated modules work wherever splitserve is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent


def main() -> int:
    protos = sorted(p.relative_to(HERE).as_posix() for p in (HERE / "v1").glob("*.proto"))
    args = ["protoc", f"-I{HERE}", f"--python_out={HERE}", f"--pyi_out={HERE}", f"--grpc_python_out={HERE}"]
    if protoc.main(args + protos) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for path in (HERE / "v1").glob("*_pb2*.py"):
        text = path.read_text()
        fixed = re.sub(r"^from v1 import", "from splitserve.protos.v1 import", text, flags=re.M)
        path.write_text(fixed)
    print(f"generated {len(protos)} proto file(s) into {HERE / 'v1'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
