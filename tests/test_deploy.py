"""deploy/: the Dockerfile and the Kubernetes manifests, checked offline.

Every manifest is validated against the Kubernetes JSON schemas bundled with
kubernetes-validate (strict: unknown fields fail) for the stated version; the
rest checks what the schemas cannot: the native sidecar wiring, the volumes,
the security contexts, that the ConfigMap's config loads with wxtokend's own
loader and points at the mounted secrets, and the Dockerfile's final stage.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, latest_version, major_minor
from packaging.version import Version

from wxtokend.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
BASE = KUBE / "base"
OVERLAYS = KUBE / "overlays"
DOCKERFILE = DEPLOY / "Dockerfile"
KUSTOMIZATION = BASE / "kustomization.yaml"

# The version the manifests are written for and validated against (native
# sidecars are on by default from 1.29). The newest schemas kubernetes-validate
# ships are checked too, so nothing used here was removed since.
KUBERNETES_VERSION = "1.30"
VERSIONS = sorted({KUBERNETES_VERSION, major_minor(latest_version())}, key=Version)

Doc = dict[str, Any]


# --- loading ---------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in BASE.glob("*.y*ml") if p.name != KUSTOMIZATION.name)


def documents() -> list[tuple[str, Doc]]:
    """(file name, document) for every non-empty YAML document in the manifests."""
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def the(kind: str) -> Doc:
    """The one document of ``kind``."""
    found = [doc for _, doc in documents() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def doc_id(item: tuple[str, Doc]) -> str:
    name, doc = item
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def kustomization() -> Doc:
    data = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def pod_spec() -> Doc:
    spec: Doc = the("Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar() -> Doc:
    found = [c for c in pod_spec().get("initContainers", []) if c["name"] == "wxtokend"]
    assert len(found) == 1, "expected one init container named wxtokend"
    return found[0]


def app_containers() -> list[Doc]:
    containers: list[Doc] = pod_spec()["containers"]
    return containers


def all_containers() -> list[Doc]:
    return [*pod_spec().get("initContainers", []), *app_containers()]


def volume(name: str) -> Doc:
    found = [v for v in pod_spec()["volumes"] if v["name"] == name]
    assert len(found) == 1, f"expected one volume named {name}"
    return found[0]


def volume_of(kind: str) -> Doc:
    """The one pod volume with a ``kind`` source (configMap, secret, emptyDir)."""
    found = [v for v in pod_spec()["volumes"] if kind in v]
    assert len(found) == 1, f"expected one {kind} volume"
    return found[0]


def mount(container: Doc, volume_name: str) -> Doc | None:
    found = [m for m in container.get("volumeMounts", []) if m["name"] == volume_name]
    assert len(found) <= 1
    return found[0] if found else None


def config_map_key() -> str:
    data = the("ConfigMap")["data"]
    assert len(data) == 1, "the ConfigMap should hold just the config file"
    return str(next(iter(data)))


def embedded_config() -> Doc:
    text = the("ConfigMap")["data"][config_map_key()]
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def config_path() -> str:
    """Where the sidecar sees the ConfigMap's config file."""
    config_mount = mount(sidecar(), volume_of("configMap")["name"])
    assert config_mount is not None
    return f"{config_mount['mountPath'].rstrip('/')}/{config_map_key()}"


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def probe_port(container: Doc, probe: str) -> int:
    """The container port a probe's httpGet targets (named ports resolved)."""
    port = container[probe]["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"{probe} uses port {port!r}, which the container does not declare"
    return int(named[0])


# --- the Dockerfile ----------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """Instructions per stage, FROM first; stage 0 is what precedes the first FROM."""
    stages: list[list[Instruction]] = [[]]
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        name, _, args = full.partition(" ")
        instruction = Instruction(name.upper(), args.strip())
        if instruction.name == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    assert not pending, "the Dockerfile ends inside a line continuation"
    return stages


def build_args() -> dict[str, str]:
    args = {}
    for ins in dockerfile_stages()[0]:
        assert ins.name == "ARG", f"only ARG may precede the first FROM, not {ins.name}"
        key, _, value = ins.args.partition("=")
        args[key] = value
    return args


def base_image(stage: list[Instruction]) -> str:
    ref = stage[0].args.split()[0]
    for key, value in build_args().items():
        ref = ref.replace(f"${{{key}}}", value).replace(f"${key}", value)
    return ref


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env = {}
    for ins in stage:
        if ins.name == "ENV":
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def pyproject() -> Doc:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --- tests -------------------------------------------------------------------


class TestKubernetesSchemas:
    """Every resource against the Kubernetes schemas, offline and strict."""

    def test_stated_version_supports_native_sidecars_and_is_bundled(self) -> None:
        """The stated version is >= 1.29 and kubernetes-validate ships its schemas."""
        assert Version(KUBERNETES_VERSION) >= Version("1.29")
        assert KUBERNETES_VERSION in {major_minor(v) for v in all_versions()}

    @pytest.mark.parametrize("version", VERSIONS)
    @pytest.mark.parametrize("item", documents(), ids=doc_id)
    def test_document_validates_strictly(self, item: tuple[str, Doc], version: str) -> None:
        """The document is valid for the version, with no unknown fields."""
        _, doc = item
        validated = kubernetes_validate.validate(doc, version, strict=True)
        assert validated == version, f"validated against {validated}, not {version}"

    def test_strict_validation_rejects_an_unknown_field(self) -> None:
        """Strict mode really is on: a misspelt container field fails validation."""
        doc = copy.deepcopy(the("Deployment"))
        doc["spec"]["template"]["spec"]["initContainers"][0]["readOnlyRootFilesytem"] = True
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)

    def test_version_is_stated_in_the_kustomization_and_readme(self) -> None:
        """kustomization.yaml and the README's Kubernetes section name the version."""
        assert f"Kubernetes {KUBERNETES_VERSION}" in KUSTOMIZATION.read_text(encoding="utf-8")
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        section = readme.split("\n## Kubernetes\n", 1)[1].split("\n## ", 1)[0]
        assert f"Kubernetes {KUBERNETES_VERSION}" in section
        assert "kubectl apply -k deploy/kubernetes" in section
        assert "docker build -f deploy/Dockerfile" in section


class TestKustomization:
    """kustomization.yaml and what it builds."""

    def test_lists_exactly_the_manifest_files(self) -> None:
        """Every listed resource exists and no manifest file is left out."""
        listed = kustomization()["resources"]
        assert len(listed) == len(set(listed)), "a resource is listed twice"
        assert all((BASE / name).is_file() for name in listed)
        assert sorted(listed) == [p.name for p in manifest_files()]

    def test_every_file_holds_one_named_resource(self) -> None:
        """One resource per file, each with a kind, an apiVersion and a name."""
        for path in manifest_files():
            docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
            assert len(docs) == 1, path.name
            assert docs[0]["apiVersion"], path.name
            assert docs[0]["kind"], path.name
            assert docs[0]["metadata"]["name"], path.name

    def test_image_is_set_by_each_variant(self) -> None:
        """The base names the image only as wxtokend; each variant sets registry and tag."""
        assert sidecar()["image"] == "wxtokend"
        assert "images" not in kustomization()


# --- the rendered variants ------------------------------------------------------

ALL_VERSIONS = [f"1.{minor}" for minor in range(28, 38)]
# Where each variant works: native sidecars need 1.29; the pre-1.29 overlay works on all.
VARIANTS = {
    "default": (KUBE, ALL_VERSIONS[1:]),
    "pre-1.29": (OVERLAYS / "pre-1.29", ALL_VERSIONS),
    "fleet": (OVERLAYS / "fleet", ALL_VERSIONS[1:]),
}
_rendered: dict[str, list[Doc]] = {}


def rendered(variant: str) -> list[Doc]:
    """`kubectl kustomize` of a variant (cached: kubectl takes a moment)."""
    if variant not in _rendered:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl not installed (tests/run installs Debian's kubernetes-client)")
        out = subprocess.run(
            [kubectl, "kustomize", str(VARIANTS[variant][0])],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        _rendered[variant] = [d for d in yaml.safe_load_all(out) if d]
    return _rendered[variant]


def rendered_kind(variant: str, kind: str) -> Doc:
    found = [d for d in rendered(variant) if d["kind"] == kind]
    assert len(found) == 1, (variant, kind)
    return found[0]


def rendered_config(variant: str) -> Doc:
    config = yaml.safe_load(rendered_kind(variant, "ConfigMap")["data"]["config.yaml"])
    assert isinstance(config, dict)
    return config


class TestVariants:
    """Each kustomize variant renders, validates strictly for every version it supports,
    and keeps the promises its comments make."""

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_validates_for_every_supported_version(self, variant: str) -> None:
        """Every rendered resource, strictly, for each Kubernetes version in its range."""
        docs = rendered(variant)
        assert {d["kind"] for d in docs} >= {"Deployment", "ConfigMap", "Secret"}
        for version in VARIANTS[variant][1]:
            for doc in docs:
                validated = kubernetes_validate.validate(doc, version, strict=True)
                assert validated == version, (variant, doc["kind"], version)

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_image_override_applies(self, variant: str) -> None:
        """The variant's images: entry rewrites every wxtokend container's image (set in
        each variant: an overlay's patches come after the base's transformers)."""
        own = yaml.safe_load((VARIANTS[variant][0] / "kustomization.yaml").read_text())
        image = next(i for i in own["images"] if i["name"] == "wxtokend")
        spec = rendered_kind(variant, "Deployment")["spec"]["template"]["spec"]
        ours = [
            c
            for c in [*spec.get("initContainers", []), *spec["containers"]]
            if c["name"] == "wxtokend"
        ]
        assert ours
        assert all(c["image"] == f"{image['newName']}:{image['newTag']}" for c in ours)

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_classic_grant_only_where_pods_cannot_collide(self, variant: str) -> None:
        """A classic-grant app only in fleet mode, or in one pod replaced with Recreate."""
        config = rendered_config(variant)
        if all(a.get("grant", "stable") == "stable" for a in config["apps"]):
            return
        deployment = rendered_kind(variant, "Deployment")["spec"]
        alone = deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
        assert "fleet" in config or alone

    @pytest.mark.parametrize("variant", list(VARIANTS))
    def test_probe_listen_fits_every_ip_family(self, variant: str) -> None:
        """[::]: dual-stack where it can, IPv4-only or IPv6-only clusters alike."""
        assert split_listen(rendered_config(variant)["admin"]["probe_listen"])[0] == "::"

    def test_pre_129_has_no_native_sidecar(self) -> None:
        """No restartPolicy on the init container (dropped before 1.29, the pod would hang):
        it fetches once (run --once) and wxtokend refreshes as a regular container."""
        spec = rendered_kind("pre-1.29", "Deployment")["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        assert "restartPolicy" not in init
        assert init["args"][:2] == ["run", "--once"]
        assert not any(probe in init for probe in ("startupProbe", "livenessProbe", "ports"))
        refresher = next(c for c in spec["containers"] if c["name"] == "wxtokend")
        assert refresher["args"] == ["run", "-c", init["args"][-1]]
        assert refresher["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert refresher["volumeMounts"] == init["volumeMounts"]
        assert refresher["securityContext"] == init["securityContext"]

    def test_fleet_config_loads_with_the_fleet_files(self, tmp_path: Path) -> None:
        """The fleet overlay's config names the Secret's redis-url and fleet-key files and
        loads with the real loader; the Secret holds placeholders for both."""
        config = rendered_config("fleet")
        fleet = config["fleet"]
        secret = rendered_kind("fleet", "Secret")["stringData"]
        for key in ("redis_file", "key_file"):
            assert Path(fleet[key]).name in secret
            assert "REPLACE-ME" in secret[Path(fleet[key]).name]
        assert rendered_kind("fleet", "Deployment")["spec"]["replicas"] > 1
        config["output_dir"] = str(tmp_path / "tokens")
        config["fleet"] = {"redis": "redis://127.0.0.1:1/0", "key_file": str(tmp_path / "k")}
        (tmp_path / "k").write_text("k" * 40 + "\n")
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        loaded = load_config(path, secrets=False)
        assert loaded.fleet is not None
        assert any(a.grant == "classic" for a in loaded.apps)

    def test_network_policy_guards_the_probe_port(self) -> None:
        """Only the monitoring namespace reaches the probe port; the admin port never."""
        policy = rendered_kind("default", "NetworkPolicy")["spec"]
        assert (
            policy["podSelector"]["matchLabels"]
            == (rendered_kind("default", "Deployment")["spec"]["selector"]["matchLabels"])
        )
        probe = split_listen(rendered_config("default")["admin"]["probe_listen"])[1]
        ports = [p["port"] for rule in policy["ingress"] for p in rule.get("ports", [])]
        assert probe in ports
        assert split_listen(rendered_config("default")["admin"]["listen"])[1] not in ports
        for rule in policy["ingress"]:
            assert rule.get("from"), "a rule without from: would open the port to all"

    def test_disruption_budget_selects_the_pods(self) -> None:
        """The PodDisruptionBudget covers the Deployment's pods, one at a time."""
        pdb = rendered_kind("default", "PodDisruptionBudget")["spec"]
        deployment = rendered_kind("default", "Deployment")["spec"]
        assert pdb["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
        assert pdb["maxUnavailable"] == 1
        assert deployment["replicas"] > 1


class TestSidecar:
    """wxtokend as a native sidecar that gates the app container's start."""

    def test_wxtokend_is_a_native_sidecar(self) -> None:
        """wxtokend is an init container with restartPolicy Always, not a regular one."""
        assert sidecar()["restartPolicy"] == "Always"
        assert "wxtokend" not in [c["name"] for c in app_containers()]
        assert not any("wxtokend" in c["image"] for c in app_containers())

    def test_startup_probe_waits_for_readyz(self) -> None:
        """The startupProbe hits /readyz, so the app starts only once tokens exist."""
        probe = sidecar()["startupProbe"]
        assert probe["httpGet"]["path"] == "/readyz"
        # Long enough to survive a slow first fetch before the kubelet restarts it.
        assert probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) >= 60

    def test_liveness_and_readiness_probes(self) -> None:
        """livenessProbe is /healthz and readinessProbe is /readyz."""
        assert sidecar()["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert sidecar()["readinessProbe"]["httpGet"]["path"] == "/readyz"

    @pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
    def test_probes_use_the_probe_listener(self, probe: str) -> None:
        """Every probe targets admin.probe_listen's port, never the admin API's."""
        admin = embedded_config()["admin"]
        assert probe_port(sidecar(), probe) == split_listen(admin["probe_listen"])[1]
        assert probe_port(sidecar(), probe) != split_listen(admin["listen"])[1]

    def test_admin_api_stays_on_loopback(self) -> None:
        """admin.listen is loopback and its port is not declared by any container."""
        host, port = split_listen(embedded_config()["admin"]["listen"])
        assert ipaddress.ip_address(host).is_loopback
        declared = {p["containerPort"] for c in all_containers() for p in c.get("ports", [])}
        assert port not in declared

    def test_args_point_at_the_mounted_config(self) -> None:
        """The sidecar runs `run -c` on the ConfigMap's file where it is mounted."""
        assert "command" not in sidecar(), "keep the image's ENTRYPOINT (wxtokend)"
        assert sidecar()["args"] == ["run", "-c", config_path()]


class TestVolumes:
    """Tokens in memory, config and secrets as hot-reloadable directories."""

    def test_tokens_live_in_memory_with_a_size_limit(self) -> None:
        """The token volume is an emptyDir with medium Memory and a sizeLimit."""
        empty_dir = volume_of("emptyDir")["emptyDir"]
        assert empty_dir["medium"] == "Memory"
        assert empty_dir["sizeLimit"]

    def test_sidecar_writes_tokens_below_the_volume_root(self) -> None:
        """The sidecar mounts the token volume read-write; output_dir is a directory in it,
        not its world-writable (1777) root, where anyone in the pod could plant a file."""
        tokens = mount(sidecar(), volume_of("emptyDir")["name"])
        assert tokens is not None
        assert not tokens.get("readOnly", False)
        output_dir = Path(embedded_config()["output_dir"])
        assert output_dir.parent == Path(tokens["mountPath"])

    def test_app_containers_mount_only_the_tokens_read_only(self) -> None:
        """Every app container mounts output_dir (subPath), read-only, at /run/wxtoken."""
        output_dir = Path(embedded_config()["output_dir"])
        for container in app_containers():
            tokens = mount(container, volume_of("emptyDir")["name"])
            assert tokens is not None, container["name"]
            assert tokens.get("readOnly") is True, container["name"]
            assert tokens["subPath"] == output_dir.name
            assert tokens["mountPath"] == "/run/wxtoken"

    def test_no_sub_path_mounts_of_config_or_secrets(self) -> None:
        """No ConfigMap or Secret mount uses subPath, which never sees their updates."""
        watched = {volume_of(kind)["name"] for kind in ("configMap", "secret")}
        for container in all_containers():
            for m in container.get("volumeMounts", []):
                if m["name"] in watched:
                    assert "subPath" not in m, (container["name"], m)
                    assert "subPathExpr" not in m, (container["name"], m)

    def test_config_and_secrets_are_read_only_and_sidecar_only(self) -> None:
        """Only the sidecar mounts the ConfigMap and the Secret, both read-only."""
        for kind in ("configMap", "secret"):
            name = volume_of(kind)["name"]
            config_mount = mount(sidecar(), name)
            assert config_mount is not None
            assert config_mount.get("readOnly") is True
            assert all(mount(c, name) is None for c in app_containers())

    def test_secret_files_are_owner_read_only(self) -> None:
        """The Secret's files are 0400, readable by the sidecar through fsGroup."""
        source = volume_of("secret")["secret"]
        assert source["secretName"] == the("Secret")["metadata"]["name"]
        assert source["defaultMode"] == 0o400
        assert pod_spec()["securityContext"]["fsGroup"] == sidecar()["securityContext"].get(
            "runAsGroup", pod_spec()["securityContext"].get("runAsGroup")
        )

    def test_config_map_volume_is_the_config_map(self) -> None:
        """The configMap volume mounts the ConfigMap in this directory."""
        assert volume_of("configMap")["configMap"]["name"] == the("ConfigMap")["metadata"]["name"]

    def test_every_secret_file_is_a_key_of_the_secret(self) -> None:
        """Each app's secret_file is /etc/wxtokend/secrets/<key> and every key is used."""
        secrets_mount = mount(sidecar(), volume_of("secret")["name"])
        assert secrets_mount is not None
        directory = secrets_mount["mountPath"].rstrip("/")
        used = set()
        for app in embedded_config()["apps"]:
            path = Path(app["secret_file"])
            assert path.is_absolute(), app["secret_file"]
            assert str(path.parent) == directory, app["secret_file"]
            used.add(path.name)
        assert used == set(the("Secret")["stringData"])

    def test_secret_values_are_marked_placeholders(self) -> None:
        """Every value in the example Secret is an obvious REPLACE-ME placeholder."""
        secret = the("Secret")
        assert "data" not in secret, "keep the example in stringData, as placeholders"
        assert all("REPLACE-ME" in value for value in secret["stringData"].values())


class TestSecurityContext:
    """Non-root, read-only, no capabilities, RuntimeDefault seccomp, bounded resources."""

    def test_pod_security_context(self) -> None:
        """The pod runs as non-root with an fsGroup and RuntimeDefault seccomp."""
        context = pod_spec()["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsGroup"] > 0
        assert context["fsGroup"] > 0
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod_spec()["automountServiceAccountToken"] is False

    @pytest.mark.parametrize("name", [c["name"] for c in all_containers()])
    def test_container_is_locked_down(self, name: str) -> None:
        """The container is non-root, read-only, without capabilities or escalation."""
        container = next(c for c in all_containers() if c["name"] == name)
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] > 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context["capabilities"].get("add")
        assert not context.get("privileged", False)
        assert context["seccompProfile"]["type"] == "RuntimeDefault"

    @pytest.mark.parametrize("name", [c["name"] for c in all_containers()])
    def test_container_has_requests_and_limits(self, name: str) -> None:
        """The container requests CPU and memory and limits memory; wxtokend has no CPU
        limit (CFS throttling would stretch its CPU-bound start past the startupProbe)."""
        container = next(c for c in all_containers() if c["name"] == name)
        assert set(container["resources"]["requests"]) >= {"cpu", "memory"}
        assert "memory" in container["resources"]["limits"]
        if name == "wxtokend":
            assert "cpu" not in container["resources"]["limits"]

    def test_sidecar_runs_as_the_image_user(self) -> None:
        """The sidecar's runAsUser:runAsGroup is the Dockerfile's USER."""
        user = next(i.args for i in final_stage() if i.name == "USER")
        context = sidecar()["securityContext"]
        assert user == f"{context['runAsUser']}:{context['runAsGroup']}"

    def test_app_runs_as_another_user(self) -> None:
        """App containers run as a different uid: they read tokens only via the group."""
        sidecar_uid = sidecar()["securityContext"]["runAsUser"]
        for container in app_containers():
            assert container["securityContext"]["runAsUser"] != sidecar_uid


class TestConfigMap:
    """The embedded config.yaml."""

    def test_embedded_config_is_a_yaml_mapping(self) -> None:
        """config.yaml in the ConfigMap parses to a mapping with apps."""
        config = embedded_config()
        assert config["output_dir"] == "/run/wxtoken-volume/tokens"
        assert config["file_mode"] == "0640"
        assert config["apps"]

    def test_loads_with_the_real_loader(self, tmp_path: Path) -> None:
        """wxtokend's own loader accepts the config as is (secrets aside)."""
        path = tmp_path / config_map_key()
        path.write_text(the("ConfigMap")["data"][config_map_key()], encoding="utf-8")
        config = load_config(path, environ={}, secrets=False)
        assert config.output_dir == Path("/run/wxtoken-volume/tokens")
        assert config.file_mode == 0o640
        assert [a.name for a in config.apps] == [a["name"] for a in embedded_config()["apps"]]
        assert {a.name for a in config.apps} == set(the("Secret")["stringData"])
        assert config.admin.listen is not None
        assert config.admin.listen.is_loopback
        assert config.admin.probe_listen is not None
        assert not config.admin.probe_listen.is_loopback

    def test_several_replicas_use_only_the_stable_grant(self) -> None:
        """With more than one replica every app uses grant: stable, never classic."""
        if the("Deployment")["spec"].get("replicas", 1) > 1:
            assert all(a.get("grant", "stable") == "stable" for a in embedded_config()["apps"])


class TestDockerfile:
    """deploy/Dockerfile: multi-stage, slim, non-root, runtime dependencies only."""

    def test_every_stage_uses_a_pinned_slim_python(self) -> None:
        """Every stage is FROM python:3.N.P-slim-<debian>: an exact release on an exact
        Debian release (optionally a digest), never a tag that moves to a new Python."""
        stages = dockerfile_stages()[1:]
        assert len(stages) >= 2, "expected a build stage and a runtime stage"
        for stage in stages:
            image = base_image(stage)
            assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image)
        assert len({base_image(s) for s in stages}) == 1, "the venv needs the same Python"

    def test_final_stage_copies_only_the_built_venv(self) -> None:
        """The runtime stage copies from the build stage only and installs nothing."""
        build_name = dockerfile_stages()[1][0].args.split()[-1]
        copies = [i.args for i in final_stage() if i.name in ("COPY", "ADD")]
        assert copies
        assert all(c.startswith(f"--from={build_name} ") for c in copies)
        runs = " ".join(i.args for i in final_stage() if i.name == "RUN")
        assert not re.search(r"pip3? install|apt-get install|apk add", runs)

    def test_runs_as_a_numeric_non_root_user(self) -> None:
        """The final USER is a numeric uid:gid, neither of them 0."""
        users = [i.args for i in final_stage() if i.name == "USER"]
        assert users
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])

    def test_installs_only_runtime_dependencies(self) -> None:
        """No extras (no [test]), no editable install, no pip cache."""
        text = DOCKERFILE.read_text(encoding="utf-8")
        assert "[test]" not in text
        assert not re.search(r"install\s+[^\n]*\.\[", text)
        assert "--editable" not in text
        assert " -e " not in text
        build = dockerfile_stages()[1]
        assert env_of(build).get("PIP_NO_CACHE_DIR") == "1" or "--no-cache-dir" in text

    def test_copies_only_what_the_package_build_needs(self) -> None:
        """The build stage copies pyproject.toml, the README and wxtokend/, no more."""
        sources = set()
        for ins in dockerfile_stages()[1]:
            if ins.name in ("COPY", "ADD"):
                *srcs, _ = [w for w in ins.args.split() if not w.startswith("--")]
                sources.update(s.rstrip("/") for s in srcs)
        assert sources == {"pyproject.toml", "README.md", "wxtokend"}
        assert pyproject()["project"]["readme"] in sources
        assert all((ROOT / s).exists() for s in sources)

    def test_entrypoint_and_default_command(self) -> None:
        """ENTRYPOINT is the wxtokend console script; CMD runs the default config."""
        stage = final_stage()
        entrypoint = [json.loads(i.args) for i in stage if i.name == "ENTRYPOINT"]
        cmd = [json.loads(i.args) for i in stage if i.name == "CMD"]
        assert entrypoint == [["wxtokend"]]
        assert cmd == [["run", "-c", "/etc/wxtokend/config.yaml"]]
        assert "wxtokend" in pyproject()["project"]["scripts"]

    def test_environment_suits_a_read_only_root(self) -> None:
        """No bytecode writes, unbuffered output, the venv on PATH."""
        env = env_of(final_stage())
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["PATH"].startswith("/opt/wxtokend/bin:")

    def test_dockerignore_sends_only_what_is_copied(self) -> None:
        """.dockerignore ignores everything, then lets in exactly the COPY sources (and the
        Dockerfile): no .git, .venv, tests or local secrets reach the builder."""
        lines = [
            line.strip()
            for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*"
        allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        assert allowed == {"pyproject.toml", "README.md", "wxtokend", "deploy/Dockerfile"}
        assert "**/__pycache__" in lines

    def test_healthcheck_asks_the_daemon(self) -> None:
        """HEALTHCHECK runs `wxtokend health --ready` (exec form: no shell in the check)."""
        checks = [i.args for i in final_stage() if i.name == "HEALTHCHECK"]
        assert len(checks) == 1
        options, _, command = checks[0].partition("CMD")
        assert json.loads(command) == ["wxtokend", "health", "--ready"]
        assert "--start-period=" in options

    def test_user_is_created_without_warnings(self) -> None:
        """No --system for uid 10001 (useradd warns outside SYS_UID_MIN..SYS_UID_MAX)."""
        runs = " ".join(i.args for i in final_stage() if i.name == "RUN")
        assert "useradd" in runs
        assert "--system" not in runs
        assert "--no-log-init" in runs

    def test_exposes_only_the_probe_port(self) -> None:
        """EXPOSE names the probe listener's port, not the loopback admin API."""
        exposed = [i.args for i in final_stage() if i.name == "EXPOSE"]
        port = split_listen(embedded_config()["admin"]["probe_listen"])[1]
        assert exposed == [str(port)]
