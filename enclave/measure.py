"""``make SGX=1 measure``: the measurement preview of a rendered manifest.

MRENCLAVE itself needs Gramine's ``libpal.so`` and its build constants (see docs/deploy.md); what a
build host controls is everything MRENCLAVE covers besides those: the manifest bytes, which carry the
SHA-256 of every trusted file. The preview lists every trusted file with its SHA-256 (re-hashed now,
so a file changed since rendering is an error, as Gramine would refuse it), the manifest's own
SHA-256, and one digest over all of it. Two builds whose previews agree give the same MRENCLAVE under
the same Gramine. Entries only an installed Gramine can measure are listed as such.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tomllib
from pathlib import Path
from typing import Final

HEADER: Final = (
    "# Measurement preview (enclave/measure.py): every trusted file's SHA-256, the manifest's SHA-256,\n"
    "# and one digest over both. Not MRENCLAVE (that adds Gramine's libpal.so); equal previews give equal\n"
    "# MRENCLAVEs under one Gramine build. Lines starting with 'gramine' are measured by Gramine itself.\n"
)


class MeasureError(Exception):
    """A trusted file is missing or differs from the hash the manifest carries."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def preview_lines(manifest_path: Path) -> list[str]:
    """The preview's measured lines (without the header and the final digest line)."""
    data = manifest_path.read_bytes()
    manifest = tomllib.loads(data.decode())
    lines = []
    for entry in manifest.get("sgx", {}).get("trusted_files", []):
        uri = entry["uri"] if isinstance(entry, dict) else entry
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if sha is None:
            lines.append(f"gramine {uri}")
            continue
        path = Path(uri.removeprefix("file:"))
        try:
            now = _sha256(path)
        except OSError as e:
            raise MeasureError(f"trusted file {path}: {e.strerror}") from None
        if now != sha:
            raise MeasureError(f"trusted file {path} changed since the manifest was rendered: re-render it")
        lines.append(f"{sha} {path}")
    if "entrypoint" not in manifest.get("loader", {}):
        lines.append("gramine loader.entrypoint (libsysdb.so)")
    lines.append(f"{hashlib.sha256(data).hexdigest()} manifest")
    return lines


def preview(manifest_path: Path) -> tuple[str, str]:
    """(preview file text, preview digest)."""
    lines = preview_lines(manifest_path)
    body = "".join(f"{line}\n" for line in lines)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"{HEADER}{body}{digest} preview-digest\n", digest


def read_digest(preview_path: Path) -> bytes:
    """The 32-byte preview digest from a preview file (the dry run's MRENCLAVE)."""
    last = preview_path.read_text().rstrip("\n").rsplit("\n", 1)[-1]
    digest, _, label = last.partition(" ")
    if label != "preview-digest" or len(digest) != 64:
        raise MeasureError(f"{preview_path} does not end with a preview digest")
    return bytes.fromhex(digest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        text, digest = preview(args.manifest)
    except MeasureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out.write_text(text)
    files = text.count("\n") - HEADER.count("\n") - 2
    print(f"{args.out}: {files} trusted entries; preview digest {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
