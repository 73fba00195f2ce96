"""Deployment artifacts (deploy/), each checked the way its tool would: hadolint for the Dockerfile,
the Kubernetes schemas for the DaemonSet, and for the systemd units the commands they run (the TD
unit's key file really unlocks a LUKS2 volume, where cryptsetup exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sealing_key_provider.client.sdk import KeyClient
from sealing_key_provider.client.trust import ProviderTrust
from sealing_key_provider.collateral import FileSource
from sealing_key_provider.dcap import Verifier

from .client_helpers import SimTd, start_provider

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
HADOLINT = Path(sys.executable).parent / "hadolint"
K8S_VERSION = "1.37.0"


# --- Dockerfile ---------------------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def test_dockerfile_passes_hadolint() -> None:
    result = _hadolint(DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_an_unpinned_root_dockerfile(tmp_path: Path) -> None:
    """The lint above can fail: an untagged base and unpinned packages are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3008" in result.stdout


def test_dockerfile_pins_its_base_once_signs_from_a_secret_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    images = re.findall(r"^ARG GRAMINE_IMAGE=(\S+)$", text, re.M)
    assert len(images) == 1
    assert re.fullmatch(r"gramineproject/gramine:[\w.-]+@sha256:[0-9a-f]{64}", images[0])
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${GRAMINE_IMAGE}" for f in froms)
    # The signing key only ever comes from a BuildKit secret mount; no layer copies or names a key file.
    assert "--mount=type=secret,id=enclave-key,required=true" in text
    assert "SGX_SIGNING_KEY=/run/secrets/enclave-key" in text
    for line in text.splitlines():
        if re.match(r"^(COPY|ADD|ENV|ARG)\b", line):
            assert ".pem" not in line and "secret" not in line.lower(), line
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)$", final, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["gramine-sgx", "sealing-key-provider"]' in final
    assert "manifest.sgx" in final and ".sig" in final


def test_container_configuration_differs_from_production_only_in_its_listeners() -> None:
    production = tomllib.loads((REPO / "gramine" / "config.toml").read_text())
    container = tomllib.loads((DEPLOY / "config-container.toml").read_text())
    assert container["server"] == {
        "legacy_listen": "0.0.0.0:3443",
        "http_listen": "0.0.0.0:8080",
        "https_listen": "0.0.0.0:8443",
        "attestation_lifetime": production["server"]["attestation_lifetime"],
    }
    production.pop("server")
    container.pop("server")
    assert production == container


# --- compose ------------------------------------------------------------------------------------------


def test_compose_has_the_sgx_devices_aesm_pccs_settings_and_loopback_ports() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["provider"]
    assert sorted(service["devices"]) == [
        "/dev/sgx_enclave:/dev/sgx_enclave",
        "/dev/sgx_provision:/dev/sgx_provision",
    ]
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/var/run/aesmd"]["source"] == "/var/run/aesmd"
    assert mounts["/etc/sgx_default_qcnl.conf"]["read_only"] is True
    assert service["ports"] and all(p.startswith("127.0.0.1:") for p in service["ports"])
    assert {p.rsplit(":", 1)[1] for p in service["ports"]} == {"3443", "8080", "8443"}
    assert service["restart"] == "on-failure"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["build"]["secrets"] == ["enclave-key"]
    assert "file" in compose["secrets"]["enclave-key"]
    assert "ALL" in service["cap_drop"]


# --- Kubernetes -----------------------------------------------------------------------------------------


def _daemonset() -> dict[str, object]:
    data = yaml.safe_load((DEPLOY / "kubernetes" / "daemonset.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_daemonset_validates_against_the_kubernetes_schema() -> None:
    kubernetes_validate.validate(_daemonset(), K8S_VERSION, strict=True)


def test_a_broken_daemonset_does_not_validate() -> None:
    data = _daemonset()
    data["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"  # type: ignore[index]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, K8S_VERSION, strict=True)
    data = _daemonset()
    data["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}  # type: ignore[index]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(data, K8S_VERSION, strict=True)


def test_daemonset_runs_one_provider_per_sgx_node_with_probes_and_aesm() -> None:
    data = _daemonset()
    assert data["kind"] == "DaemonSet"
    pod = data["spec"]["template"]["spec"]  # type: ignore[index]
    (container,) = pod["containers"]
    limits = container["resources"]["limits"]
    assert {"sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision"} <= set(limits)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["containerPort"] for p in container["ports"] if "hostPort" in p} == {8080, 3443, 8443}
    assert all(p.get("hostIP") for p in container["ports"])  # never every host address
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/var/run/aesmd"]]["hostPath"]["path"] == "/var/run/aesmd"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- systemd --------------------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → values (systemd keys may repeat, e.g. ExecStart)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{name}: not a unit line: {raw!r}"
        current.setdefault(key, []).append(value)
    return sections


def test_host_unit_restarts_on_failure_pinned_to_a_cpu_unprivileged() -> None:
    service = _unit("sealing-key-provider.service")["Service"]
    assert service["ExecStart"] == ["/usr/bin/gramine-sgx sealing-key-provider"]
    assert service["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+", service["CPUAffinity"][0])
    assert service["User"][0] not in ("root", "0")
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["NoNewPrivileges"] == ["yes"]


def test_td_unit_keeps_the_key_in_tmpfs_unlocks_with_it_and_deletes_it() -> None:
    service = _unit("td-volume-key.service")["Service"]
    fetch, unlock = service["ExecStart"]
    key_file = "${RUNTIME_DIRECTORY}/volume.key"
    assert fetch.startswith("/usr/local/bin/sealing-key-provider get-key ")
    assert f"--out {key_file}" in fetch and "--expect-mrenclave ${PROVIDER_MRENCLAVE}" in fetch
    assert unlock.startswith("/usr/sbin/cryptsetup open --type luks2 ")
    assert f"--key-file {key_file}" in unlock
    assert service["ExecStartPost"] == [f"/bin/rm -f {key_file}"]
    assert service["ExecStopPost"] == [f"/bin/rm -f {key_file}"]
    assert service["RuntimeDirectoryMode"] == ["0700"] and service["UMask"] == ["0077"]
    # Every option the unit passes exists in the real get-key command.
    help_text = subprocess.run(
        [sys.executable, "-m", "sealing_key_provider", "get-key", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in re.findall(r"(--[a-z-]+)", fetch):
        assert option in help_text, option


def test_a_provider_key_unlocks_a_luks2_volume(tmp_path: Path) -> None:
    cryptsetup = shutil.which("cryptsetup") or (
        "/usr/sbin/cryptsetup" if Path("/usr/sbin/cryptsetup").exists() else None
    )
    if cryptsetup is None:
        pytest.skip("cryptsetup is not installed (apt-get install cryptsetup-bin): LUKS2 check not run")
    served = start_provider(tmp_path / "provider")
    try:
        trust = ProviderTrust.from_hex(mrenclave=served.mrenclave, mrsigner=str(served.info["mrsigner"]))
        verifier = Verifier(trust_anchor=served.sim.root_certificate)
        with KeyClient.http(
            served.http_url, trust, verifier, FileSource(served.collateral), SimTd(served.sim)
        ) as c:
            key = c.get_key("volume/data", 1)
            other = c.get_key("volume/other", 1)
    finally:
        served.stop()
    key_file, other_file, volume = tmp_path / "volume.key", tmp_path / "other.key", tmp_path / "volume.img"
    key_file.write_bytes(key)
    other_file.write_bytes(other)
    with open(volume, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    fmt = [cryptsetup, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2"]
    fmt += ["--pbkdf-force-iterations", "1000", "--key-file", str(key_file), str(volume)]
    subprocess.run(fmt, check=True, capture_output=True)

    def opens(with_key: Path) -> bool:
        test = [
            cryptsetup,
            "open",
            "--test-passphrase",
            "--type",
            "luks2",
            "--key-file",
            str(with_key),
            str(volume),
        ]
        return subprocess.run(test, capture_output=True, check=False).returncode == 0

    assert opens(key_file)
    assert not opens(other_file)
