"""``make SGX=1 dry-run``: the production enclave, run without SGX in exactly the file view Gramine
would give it, answering real key requests on both protocols.

What runs: the rendered manifest's ``libos.entrypoint`` with its ``loader.argv`` and only its
``loader.env``, in a private mount namespace (:mod:`enclave.view`) holding only what the manifest
gives the enclave (each ``fs.mounts`` entry read-only, restricted to what ``sgx.trusted_files``
covers; tmpfs mounts; Gramine's pseudo-files), inside a private network namespace so the fixed
production ports collide with nothing. ``/dev/attestation`` is :mod:`enclave.attestation` on the
simulated platform with MRENCLAVE = the measurement preview digest, so the provider runs its
production backend (``--platform gramine``).

Deliberate differences from ``gramine-sgx``, each said in the log:
- the dynamic loader and C library come from the host, not from Gramine's runtime directory;
- the configuration differs from production in ``collateral.pccs_url`` (the simulated PCCS) and
  ``collateral.trust_anchor`` (the simulated root CA at /dry-run/sim-root-ca.pem) only;
- a file outside the view is absent (ENOENT) where Gramine shows it and refuses to open it (EACCES).

Then a TD outside the enclave (the SDK with a simulated TD quote) asks for keys over the legacy
protocol, the HTTP API v1 and (when the configuration has ``server.https_listen``) the v1 API over
RA-TLS, and checks every answer as a TD does (provider quote or attested key or RA-TLS certificate:
DCAP, MRENCLAVE pinned to the preview, binding, same platform; then decryption); SIGTERM; the
provider must exit 0.
A provider that fails because a file is missing from its view gets a diagnosis naming the file and
the manifest template line that would have to change.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import inspect
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from . import measure, tree
from .render import DEFAULT_PKGLIBDIR

CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWNET: Final = 0x40000000
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
IFF_UP: Final = 0x1
DRY_RUN_ANCHOR: Final = "/dry-run/sim-root-ca.pem"
EXIT_SKIP: Final = 77
WORK_MARKER: Final = ".dry-run"

_libc = ctypes.CDLL(None, use_errno=True)


class DryRunError(Exception):
    """The dry run failed; the message says what and, where it can, what to change."""


def log(message: str) -> None:
    print(f"dry-run: {message}", flush=True)


# --- namespaces -------------------------------------------------------------------------------------


def enter_network_namespace() -> str:
    """Move this (still single-threaded) process into a new network namespace with loopback up, and a
    user namespace first when not root. Returns how, for the log."""
    flags = CLONE_NEWNET
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        flags |= CLONE_NEWUSER
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise PermissionError(err, f"unshare: {os.strerror(err)}")
    if uid != 0:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags_now = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags_now | IFF_UP))
    return "root" if uid == 0 else "a user namespace (unprivileged)"


def probe() -> str | None:
    """None when this machine allows the dry run's namespaces, else why not (for a test's skip)."""
    code = (
        "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
        "flags = 0x40000000 | 0x00020000 | (0 if os.geteuid() == 0 else 0x10000000); "
        "sys.exit(0 if libc.unshare(flags) == 0 else ctypes.get_errno())"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code], check=False)
    if result.returncode == 0:
        return None
    return f"this machine does not allow private mount/network namespaces (unshare: {os.strerror(result.returncode)})"


# --- the view ---------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """The parts of a rendered manifest the dry run acts on."""

    path: Path
    data: dict[str, Any]
    trusted: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = tomllib.loads(path.read_text())
        trusted: dict[str, str | None] = {}
        for entry in data.get("sgx", {}).get("trusted_files", []):
            uri = entry["uri"] if isinstance(entry, dict) else entry
            trusted[uri.removeprefix("file:")] = entry.get("sha256") if isinstance(entry, dict) else None
        return cls(path, data, trusted)

    @property
    def mounts(self) -> list[dict[str, str]]:
        return list(self.data["fs"]["mounts"])

    def env(self) -> dict[str, str]:
        out = {}
        for name, value in self.data.get("loader", {}).get("env", {}).items():
            if isinstance(value, str):
                out[name] = value
            elif "value" in value:
                out[name] = value["value"]
            elif value.get("passthrough") and name in os.environ:
                out[name] = os.environ[name]
        return out

    def is_trusted(self, host: Path) -> bool:
        """Covered by an expanded trusted file entry, or by a directory entry Gramine expands."""
        text = str(host)
        return text in self.trusted or any(u.endswith("/") and text.startswith(u) for u in self.trusted)


def _regular_files(directory: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        out.extend(Path(root) / f for f in sorted(files) if (Path(root) / f).is_file())
    return out


def _ldd(binary: Path) -> tuple[dict[str, Path], Path | None]:
    """(soname → host path, the program interpreter) as the host's loader resolves them."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    libs: dict[str, Path] = {}
    interp = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            libs[parts[0]] = Path(parts[2])
        elif parts and parts[0].startswith("/"):
            interp = Path(parts[0])
    return libs, interp


def host_runtime(entrypoint: Path, tree_root: Path) -> tuple[dict[str, Path], Path | None]:
    """The host's stand-ins for Gramine's runtime directory: the C library family every ELF file of the
    enclave tree loads, and the program interpreter."""
    runtime: dict[str, Path] = {}
    interp = None
    for elf in [entrypoint, *tree.elf_files(tree_root)]:
        libs, found = _ldd(elf)
        interp = interp or found
        for soname, path in libs.items():
            if tree.RUNTIME_LIBS_RE.match(soname):
                runtime.setdefault(soname, path)
    return runtime, interp


def resolv_conf() -> str:
    """Gramine's generated /etc/resolv.conf: nameserver, search and the supported options only."""
    keep = []
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if words and words[0] in ("nameserver", "search"):
            keep.append(" ".join(words))
        elif words and words[0] == "options":
            opts = [w for w in words[1:] if w in ("edns0", "inet6", "rotate", "use-vc")]
            if opts:
                keep.append("options " + " ".join(opts))
    return "".join(f"{line}\n" for line in keep)


@dataclass
class ViewPlan:
    ops: list[dict[str, Any]]
    notes: list[str]
    hidden: list[Path]


def plan_view(
    manifest: Manifest,
    *,
    pkglibdir: Path,
    attestation_dir: Path,
    config_overlay: tuple[Path, str] | None,
    anchor_pem: str,
    hide: Iterable[Path] = (),
) -> ViewPlan:
    """The mount operations that give the enclave exactly its manifest's file view."""
    hide = {Path(h) for h in hide}
    ops: list[dict[str, Any]] = []
    notes: list[str] = []
    hidden: list[Path] = []
    mounts = manifest.mounts
    entry = Path(manifest.data["libos"]["entrypoint"])
    for i, m in enumerate(mounts):
        path = m["path"]
        for later in mounts[i + 1 :]:
            if path == later["path"] or path.startswith(later["path"].rstrip("/") + "/"):
                raise DryRunError(
                    f"fs.mounts: {path} is hidden by the later mount of {later['path']} "
                    f"(choose another PREFIX: the enclave tree must not live under {later['path']})"
                )
        kind = m.get("type", "chroot")
        if kind == "tmpfs":
            ops.append({"op": "tmpfs", "path": path})
            continue
        if kind != "chroot":
            raise DryRunError(f"fs.mounts: the dry run does not emulate {kind} mounts ({path})")
        host = Path(m["uri"].removeprefix("file:"))
        if not host.is_absolute():
            raise DryRunError(
                f"fs.mounts: {m['uri']} is relative to gramine-sgx's working directory; use an absolute path"
            )
        if host.is_relative_to(pkglibdir):
            runtime, _ = host_runtime(entry, _tree_root(manifest))
            for soname, lib in sorted(runtime.items()):
                ops.append({"op": "bind", "source": str(lib), "path": f"{path}/{soname}"})
            notes.append(
                f"{path}: the host's loader and C library ({', '.join(sorted(runtime))}) stand in for "
                f"Gramine's runtime directory {host} (the one deliberate difference in the file view)"
            )
            continue
        if host.is_file():
            if manifest.is_trusted(host) and host not in hide:
                ops.append({"op": "bind", "source": str(host), "path": path})
            else:
                notes.append(f"{path}: {host} is mounted but not trusted, so it is not readable")
                hidden.append(host)
            continue
        if not host.is_dir():
            raise DryRunError(f"fs.mounts: {host} (for {path}) does not exist on this host")
        files = _regular_files(host)
        visible = [f for f in files if manifest.is_trusted(f) and f not in hide]
        if len(visible) == len(files):
            ops.append({"op": "bind", "source": str(host), "path": path})
        else:
            ops.append({"op": "dir", "path": path})
            for f in visible:
                ops.append({"op": "bind", "source": str(f), "path": f"{path}/{f.relative_to(host)}"})
            hidden.extend(f for f in files if f not in visible)
            notes.append(
                f"{path}: {len(files) - len(visible)} of {len(files)} files under {host} are not trusted "
                "(or hidden on purpose) and are left out of the view"
            )
    # What Gramine itself provides.
    ops.append({"op": "tmpfs", "path": "/dev", "options": "mode=0755,size=1m"})
    for dev in ("null", "zero", "random", "urandom"):
        ops.append({"op": "bind", "source": f"/dev/{dev}", "path": f"/dev/{dev}", "readonly": False})
    ops.append({"op": "bind", "source": str(attestation_dir), "path": "/dev/attestation", "readonly": False})
    ops.append({"op": "symlink", "path": "/dev/fd", "target": "/proc/self/fd"})
    ops.append({"op": "bind", "source": "/proc", "path": "/proc", "readonly": False, "recursive": True})
    if manifest.data.get("sys", {}).get("enable_extra_runtime_domain_names_conf"):
        ops.append({"op": "file", "path": "/etc/resolv.conf", "content": resolv_conf()})
    _, interp = _ldd(entry)
    if interp is not None and not any(str(interp).startswith(m["path"].rstrip("/") + "/") for m in mounts):
        ops.append({"op": "bind", "source": str(interp), "path": str(interp)})
        notes.append(f"{interp}: the host's program interpreter, where the kernel looks for it")
    # The dry-run configuration and its trust anchor.
    ops.append({"op": "file", "path": DRY_RUN_ANCHOR, "content": anchor_pem})
    if config_overlay is not None:
        source, target = config_overlay
        ops.append({"op": "bind", "source": str(source), "path": target})
    return ViewPlan(ops, notes, hidden)


def _tree_root(manifest: Manifest) -> Path:
    """The enclave tree: the mount that holds the entrypoint."""
    entry = manifest.data["libos"]["entrypoint"]
    best = None
    for m in manifest.mounts:
        inside = m.get("type", "chroot") == "chroot" and entry.startswith(m["path"].rstrip("/") + "/")
        if inside and (best is None or len(m["path"]) > len(best["path"])):
            best = m
    if best is None:
        raise DryRunError(
            f"libos.entrypoint {entry} is under no fs.mounts entry: the enclave could not start"
        )
    return Path(best["uri"].removeprefix("file:"))


# --- configuration -----------------------------------------------------------------------------------


def config_path(manifest: Manifest) -> str:
    argv = manifest.data["loader"]["argv"]
    if "--config" not in argv:
        raise DryRunError("loader.argv has no --config FILE")
    return str(argv[argv.index("--config") + 1])


def dry_run_config(production: str, pccs_url: str) -> tuple[str, list[str]]:
    """The production configuration with only the PCCS settings (URL, its CA bundle) and the trust anchor
    changed; and what changed."""
    import tomli_w

    data = tomllib.loads(production)
    collateral = data.setdefault("collateral", {})
    changes = []
    for key, value in (("pccs_url", pccs_url), ("trust_anchor", DRY_RUN_ANCHOR)):
        changes.append(f"collateral.{key}: {collateral.get(key, '(unset)')} -> {value}")
        collateral[key] = value
    if "pccs_ca_bundle" in collateral:  # the simulated PCCS speaks plain HTTP
        changes.append(f"collateral.pccs_ca_bundle: {collateral.pop('pccs_ca_bundle')} -> (unset)")
    text = tomli_w.dumps(data)
    before, after = tomllib.loads(production), tomllib.loads(text)
    for table in (before, after):
        for key in ("pccs_url", "trust_anchor", "pccs_ca_bundle"):
            table.get("collateral", {}).pop(key, None)
    if before != after:
        raise DryRunError("the dry-run configuration would differ from production in more than the PCCS")
    return text, changes


# --- diagnosis ---------------------------------------------------------------------------------------


def template_line(template: Path | None, key: str) -> str:
    if template is None or not template.exists():
        return f"the manifest template's {key}"
    for number, line in enumerate(template.read_text().splitlines(), 1):
        if line.startswith(key):
            return f"{template}:{number} ({key})"
    return f"{template} ({key})"


def _view_to_host(manifest: Manifest, view_path: str) -> Path | None:
    best = None
    for m in manifest.mounts:
        if m.get("type", "chroot") != "chroot":
            continue
        p = m["path"].rstrip("/")
        if (view_path == p or view_path.startswith(p + "/")) and (best is None or len(p) > len(best[0])):
            best = (p, Path(m["uri"].removeprefix("file:")))
    if best is None:
        return None
    rest = view_path[len(best[0]) :].lstrip("/")
    return best[1] / rest if rest else best[1]


#: Lines that report a file the enclave could not open: Python's OSErrors, and the provider's own
#: errors, which name the file in quotes next to "does not exist" / "cannot read" / "cannot access".
_FAILED_OPEN = re.compile(
    r"(?:FileNotFoundError|PermissionError|IsADirectoryError|OSError): \[Errno \d+\] [^:\n]+: '(/[^']+)'"
    r"|'(/[^']+)' does not exist|cannot (?:read|access|open) [^'\n]*'(/[^']+)'"
)


def _failed_paths(stderr: str) -> list[str]:
    found = {next(g for g in m.groups() if g) for m in _FAILED_OPEN.finditer(stderr)}
    return sorted(p for p in found if not p.startswith(("/proc/", "/dev/attestation/")))


def diagnose(stderr: str, manifest: Manifest, template: Path | None, hidden: Iterable[Path]) -> list[str]:
    """Name each file the enclave failed to open and the manifest line that would have to change."""
    hidden = set(hidden)
    findings: list[str] = []
    env = manifest.env()
    search = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    home = env.get("PYTHONHOME")
    if home:
        search += [str(p) for p in sorted(Path(home).glob("lib/python3*"))]
        search += [str(p) for p in sorted(Path(home).glob("lib/python3*/lib-dynload"))]
    for module in sorted(set(re.findall(r"No module named '([\w.]+)'", stderr))):
        rel = module.replace(".", "/")
        candidates = [f"{d}/{rel}.py" for d in search] + [f"{d}/{rel}/__init__.py" for d in search]
        excluded = tree.is_excluded(f"{rel}.py") or tree.is_excluded(f"{rel}/")
        found = [c for c in candidates if (h := _view_to_host(manifest, c)) is not None and h.exists()]
        if excluded:
            findings.append(
                f"module {module} is excluded from the enclave tree (enclave/tree.py EXCLUDED): production "
                "code must not import it; remove the import"
            )
        elif found:
            host = _view_to_host(manifest, found[0])
            why = "hidden on purpose" if host in hidden else "not covered by sgx.trusted_files"
            findings.append(
                f"module {module}: {found[0]} is missing from the enclave's view ({why}); the enclave needs "
                f"{host} trusted: see {template_line(template, 'sgx.trusted_files')}"
            )
        else:
            findings.append(
                f"module {module} is in no directory of the enclave's sys.path ({', '.join(search)}): add the "
                f"distribution to the lock (make lock) or fix {template_line(template, 'loader.env.PYTHONPATH')}"
            )
    for path in _failed_paths(stderr):
        host = _view_to_host(manifest, path)
        if host is None:
            findings.append(
                f"file {path} is under no fs.mounts entry: add a mount ({template_line(template, 'fs.mounts')}) "
                f"and trust it ({template_line(template, 'sgx.trusted_files')})"
            )
        else:
            why = "hidden on purpose" if host in hidden else "not covered by sgx.trusted_files"
            findings.append(
                f"file {path} (host {host}) is missing from the enclave's view ({why}): see "
                f"{template_line(template, 'sgx.trusted_files')}"
            )
    for lib in sorted(set(re.findall(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", stderr))):
        findings.append(
            f"shared library {lib} is not in the enclave's view: the enclave tree copies the libraries ldd "
            f"finds (enclave/tree.py needed_libraries); see {template_line(template, 'loader.env.LD_LIBRARY_PATH')}"
        )
    return findings


# --- the run ----------------------------------------------------------------------------------------


def _wait_ready(process: subprocess.Popen[bytes], url: str, deadline: float) -> None:
    import httpx

    with httpx.Client(timeout=5, trust_env=False) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DryRunError(f"the provider exited with status {process.returncode} before it was ready")
            try:
                if http.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise DryRunError("the provider did not become ready in time")


def _served_counts(url: str) -> list[str]:
    """The provider's own count of answered requests per protocol (its /metrics)."""
    import httpx

    with httpx.Client(timeout=10, trust_env=False) as http:
        text = http.get(f"{url}/metrics").text
    return [
        line for line in text.splitlines() if line.startswith("skp_requests_total{") and 'code="OK"' in line
    ]


def _has_parameter(function: Any, name: str) -> bool:
    return name in inspect.signature(function).parameters


def _listen(config: Mapping[str, Any], key: str, default: str) -> str:
    return str(config.get("server", {}).get(key, default))


def run(args: argparse.Namespace) -> int:
    how = enter_network_namespace()
    log(f"private network namespace as {how}; the provider's production ports collide with nothing")
    from sealing_key_provider.client.sdk import KeyClient
    from sealing_key_provider.client.trust import ProviderTrust
    from sealing_key_provider.collateral import build_source
    from sealing_key_provider.dcap import Verifier
    from sealing_key_provider.dcap.abi import SGX_FLAG_DEBUG
    from sealing_key_provider.sim import SgxEnclaveIdentity, SimPlatform
    from sealing_key_provider.sim.pccs_server import PccsServer, RegeneratingCatalog
    from sealing_key_provider.sim.platform import DEFAULT_SGX_ATTRIBUTES
    from sealing_key_provider.sim.td_quote_source import SimTdQuoteSource

    from .attestation import DRY_RUN_MRSIGNER, AttestationEmulation

    work = args.work.resolve()
    if work.exists() and any(work.iterdir()) and not (work / WORK_MARKER).exists():
        raise DryRunError(f"{work} exists and is not a dry run's directory: refusing to replace it")
    if not args.manifest.is_file():
        raise DryRunError(f"{args.manifest} does not exist: run `make SGX=1 manifest measure` first")
    manifest = Manifest.load(args.manifest)
    try:
        _, digest_hex = measure.preview(args.manifest)
    except measure.MeasureError as e:
        raise DryRunError(str(e)) from None
    if args.preview is not None and measure.read_digest(args.preview).hex() != digest_hex:
        raise DryRunError(f"{args.preview} is stale: run `make SGX=1 measure` again")
    mrenclave = bytes.fromhex(digest_hex)
    sgx = manifest.data["sgx"]
    if sgx.get("remote_attestation") != "dcap":
        raise DryRunError('sgx.remote_attestation is not "dcap": the enclave would have no quote')
    attributes = DEFAULT_SGX_ATTRIBUTES
    if sgx.get("debug"):
        attributes = bytes([attributes[0] | SGX_FLAG_DEBUG]) + attributes[1:]
    identity = SgxEnclaveIdentity(
        mrenclave=mrenclave,
        mrsigner=DRY_RUN_MRSIGNER,
        isvprodid=int(sgx.get("isvprodid", 0)),
        isvsvn=int(sgx.get("isvsvn", 0)),
        attributes=attributes,
    )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("a dry run's working directory: the next dry run replaces it\n")
    os.chmod(work, 0o755)
    sim = SimPlatform.init(work / "sim-state")
    catalog = RegeneratingCatalog(_SimFactory(sim), time.time)
    catalog.entries()
    pccs = PccsServer(catalog, "127.0.0.1", 0)
    pccs.start()
    emulation = AttestationEmulation(work / "attestation", sim, identity)
    emulation.start()
    process: subprocess.Popen[bytes] | None = None
    provider_log = work / "provider.log"
    try:
        production_config_path = config_path(manifest)
        host_config = _view_to_host(manifest, production_config_path)
        if host_config is None or not host_config.is_file():
            raise DryRunError(f"the configuration {production_config_path} is not in the enclave's view")
        config_text, changes = dry_run_config(host_config.read_text(), pccs.url)
        (work / "config.toml").write_text(config_text)
        os.chmod(work / "config.toml", 0o644)
        for change in changes:
            log(f"configuration differs from production only in {change}")
        plan = plan_view(
            manifest,
            pkglibdir=args.pkglibdir,
            attestation_dir=work / "attestation",
            config_overlay=(work / "config.toml", production_config_path),
            anchor_pem=sim.root_ca_pem_path.read_text(),
            hide=args.hide,
        )
        for note in plan.notes:
            log(note)
        (work / "root").mkdir()
        run_spec = {
            "path": manifest.data["libos"]["entrypoint"],
            "argv": manifest.data["loader"]["argv"],
            "env": manifest.env(),
            "cwd": "/",
        }
        plan_file = work / "plan.json"
        plan_file.write_text(
            json.dumps(
                {"root": str(work / "root"), "ops": plan.ops, "exec": run_spec, "drop_privileges": True}
            )
        )
        log(f"MRENCLAVE (/dev/attestation emulation) = measurement preview digest {digest_hex}")
        log(f"exec {' '.join(run_spec['argv'])} with only loader.env ({', '.join(sorted(run_spec['env']))})")
        with open(provider_log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).with_name("view.py")), str(plan_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        cfg = tomllib.loads(config_text)
        http_url = "http://" + _listen(cfg, "http_listen", "127.0.0.1:8080")
        legacy_address = _listen(cfg, "legacy_listen", "127.0.0.1:3443")
        try:
            _wait_ready(process, http_url, time.monotonic() + args.start_timeout)
        except DryRunError as e:
            if process.poll() is None:
                process.kill()
                process.wait()
            text = provider_log.read_text(errors="replace")
            findings = diagnose(text, manifest, args.template, plan.hidden)
            tail = "\n".join(text.splitlines()[-15:])
            raise DryRunError(
                "\n".join([str(e), *(f"  - {f}" for f in findings), f"provider log ({provider_log}):", tail])
            ) from None
        https = _listen(cfg, "https_listen", "")
        served = f"{http_url} (HTTP API v1), {legacy_address} (legacy)"
        log(f"provider ready: {served}" + (f", https://{https} (RA-TLS)" if https else ""))
        trust = ProviderTrust(mrenclave=mrenclave, mrsigner=DRY_RUN_MRSIGNER)
        verifier = Verifier(trust_anchor=sim.root_certificate)
        collateral = build_source(clock=time.time, pccs_url=pccs.url)
        td = SimTdQuoteSource(sim)
        # The legacy protocol does not bind its answer to the request; an SDK that refuses it unless
        # told (allow_unbound_legacy) is told here: the dry run checks that the provider serves it.
        opt_in: dict[str, Any] = {}
        if _has_parameter(KeyClient.legacy, "allow_unbound_legacy"):
            opt_in["allow_unbound_legacy"] = True
        legacy_client: Any = KeyClient.legacy  # its keywords differ between SDK versions (opt_in)
        with legacy_client(legacy_address, trust, verifier, collateral, td, timeout=30, **opt_in) as client:
            legacy_key = client.fetch()
        log(
            f"legacy request answered by the Gramine backend: provider quote verified (MRENCLAVE "
            f"{legacy_key.provider_mrenclave.hex()}, TCB {legacy_key.provider_tcb_status}), binding and "
            f"same platform checked, {len(legacy_key.key)}-byte key decrypted ({legacy_key.scheme})"
        )
        with KeyClient.http(http_url, trust, verifier, collateral, td, timeout=30) as client:
            v1 = client.fetch("dry-run/volume", 1, freshness=True)
            again = client.fetch("dry-run/volume", 1)
        if v1.key != again.key or v1.key == legacy_key.key:
            raise DryRunError("v1 keys are not stable per name or equal the legacy key")
        log(
            f"v1 request answered by the Gramine backend: attested provider key verified (its quote: "
            f"MRENCLAVE {v1.provider_mrenclave.hex()}), answer signature, binding, freshness and same "
            f"platform checked, {len(v1.key)}-byte key decrypted ({v1.scheme}, {v1.key_name} "
            f"v{v1.key_version}); a second request gave the same key"
        )
        if https:
            with KeyClient.ratls("https://" + https, trust, verifier, collateral, td, timeout=30) as client:
                over_tls = client.fetch("dry-run/volume", 1)
            if over_tls.key != v1.key:
                raise DryRunError("the RA-TLS listener gave another key than the HTTP API")
            log(
                f"v1 over RA-TLS answered by the Gramine backend: certificate (Gramine's format, both "
                f"extensions) verified before the request was sent (MRENCLAVE "
                f"{over_tls.provider_mrenclave.hex()}, key bindings, same platform), the same key as over "
                "HTTP"
            )
        quotes = sum(1 for name, _ in emulation.served if name == "quote")
        reports = sum(1 for name, _ in emulation.served if name == "report")
        log(
            f"/dev/attestation served {quotes} quote(s) and {reports} report(s) over the provider's report data"
        )
        for line in _served_counts(http_url):
            log(f"provider metrics: {line}")
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise DryRunError("the provider did not exit within 30 s of SIGTERM") from None
        if code != 0:
            raise DryRunError(f"the provider exited with status {code} after SIGTERM (expected 0)")
        log("SIGTERM: the provider exited cleanly (status 0)")
        for line in provider_log.read_text(errors="replace").splitlines():
            if "provider identity" in line or "listening on" in line or "stopped" in line:
                log(f"provider log: {line.strip()}")
        return 0
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        emulation.stop()
        pccs.stop()


class _SimFactory:
    def __init__(self, platform: Any) -> None:
        self._platform = platform

    def collateral(self, tee: str, now: int) -> Any:
        return self._platform.collateral(tee, now=now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave.dryrun", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--probe", action="store_true", help="only check that this machine allows the dry run"
    )
    parser.add_argument("--manifest", type=Path, default=Path("build/sealing-key-provider.manifest"))
    parser.add_argument("--preview", type=Path, default=Path("build/enclave-measurement.txt"))
    parser.add_argument(
        "--template", type=Path, default=Path("gramine/sealing-key-provider.manifest.template")
    )
    parser.add_argument("--pkglibdir", type=Path, default=Path(DEFAULT_PKGLIBDIR))
    parser.add_argument("--work", type=Path, default=Path("build/dry-run"))
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument(
        "--hide",
        type=Path,
        action="append",
        default=[],
        help="leave this trusted host file out of the view (tests)",
    )
    args = parser.parse_args(argv)
    if args.probe:
        why = probe()
        print(why or "ok")
        return EXIT_SKIP if why else 0
    try:
        return run(args)
    except DryRunError as e:
        print(f"dry-run: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    except PermissionError as e:
        print(f"dry-run: SKIPPED: namespaces are not allowed here ({e})", file=sys.stderr, flush=True)
        return EXIT_SKIP


if __name__ == "__main__":
    sys.exit(main())
