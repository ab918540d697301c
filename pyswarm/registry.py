"""Registry credentials for ``stack deploy --with-registry-auth``.

Read as the docker CLI reads them: ``$DOCKER_CONFIG/config.json`` (default
``~/.docker/config.json``), a registry's ``credHelpers`` entry first, then
``credsStore``, then the inline ``auths`` entry; a helper is the program
``docker-credential-NAME``, asked with ``get`` and the server address on
stdin. Each credential becomes the value of the Engine API's
``X-Registry-Auth`` header (base64url of ``{"username", "password",
"serveraddress"}`` or ``{"identitytoken", "serveraddress"}``), which is
what the nodes' engines take on a pull. The CLI stores it as a stack secret
(named after its hash: secrets never change in place) and the services
refer to it by name; only the nodes that run them receive its data, with
their assignments. Nothing here logs or prints a credential.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyswarm.errors import UsageError

DOCKER_HUB = "docker.io"
HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
HELPER_TIMEOUT = 30.0


def registry_of(image: str) -> str:
    """The registry host of an image reference, as docker decides it: the
    first path component when it has a ``.`` or ``:`` or is ``localhost``."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


@dataclass(frozen=True)
class Credential:
    registry: str
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never print a secret
        return f"Credential(registry={self.registry!r}, username={self.username!r})"

    def header(self) -> str:
        """The ``X-Registry-Auth`` value for this credential."""
        server = HUB_KEYS[0] if self.registry == DOCKER_HUB else self.registry
        body: dict[str, str] = {"serveraddress": server}
        if self.identity_token:
            body["identitytoken"] = self.identity_token
        else:
            body.update(username=self.username, password=self.password)
        return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _keys(registry: str) -> list[str]:
    if registry == DOCKER_HUB:
        return list(HUB_KEYS)
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def _helper(name: str, registry: str) -> Credential | None:
    server = HUB_KEYS[0] if registry == DOCKER_HUB else registry
    program = f"docker-credential-{name}"
    try:
        out = subprocess.run([program, "get"], input=server, capture_output=True, text=True,
                             timeout=HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise UsageError(f"the credential helper {program} named in {config_path()} is not installed") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"the credential helper {program} did not answer for {registry} in "
                         f"{HELPER_TIMEOUT:.0f}s") from None
    if out.returncode != 0:
        if "credentials not found" in (out.stdout + out.stderr).lower():
            return None
        raise UsageError(f"the credential helper {program} failed for {registry} (exit {out.returncode})")
    try:
        data = json.loads(out.stdout)
        user, secret = str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"the credential helper {program} gave no Username/Secret for {registry}") from None
    if user == "<token>":
        return Credential(registry, identity_token=secret)
    return Credential(registry, user, secret)


def _inline(entry: Any, registry: str, path: Path) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        return Credential(registry, identity_token=str(entry["identitytoken"]))
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{path}: auths.{registry}.auth is not base64 of USER:PASSWORD") from None
        if not sep:
            raise UsageError(f"{path}: auths.{registry}.auth is not base64 of USER:PASSWORD")
        return Credential(registry, user, password)
    if entry.get("username"):
        return Credential(registry, str(entry["username"]), str(entry.get("password", "")))
    return None


def credentials(registries: set[str], path: Path | None = None) -> dict[str, Credential]:
    """The credentials this machine has for each of ``registries`` (those
    with none are left out)."""
    path = path or config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: expected a JSON object")
    helpers = config.get("credHelpers") or {}
    store = config.get("credsStore") or ""
    auths = config.get("auths") or {}
    found: dict[str, Credential] = {}
    for registry in sorted(registries):
        keys = _keys(registry)
        helper = next((helpers[k] for k in keys if isinstance(helpers, dict) and k in helpers), "")
        cred = None
        if helper or store:
            cred = _helper(str(helper or store), registry)
        if cred is None and isinstance(auths, dict):
            cred = next((c for k in keys if (c := _inline(auths.get(k), registry, path)) is not None), None)
        if cred is not None:
            found[registry] = cred
    return found


AUTH_REFUSED = ("unauthorized", "authentication required", "no basic auth credentials", "access denied",
                "denied: requested access", "incorrect username or password")


def is_auth_refusal(message: str) -> bool:
    """Whether an engine's pull error says the registry wants (other) credentials."""
    text = message.lower()
    return any(words in text for words in AUTH_REFUSED)


def attach(stack: Any, path: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """``--with-registry-auth``: the stack secrets holding the credentials
    of the registries the stack's pulled images come from, each service
    pointed at its registry's (built images are shipped, not pulled).
    Returns (secrets for the deploy request, warnings)."""
    import hashlib

    pulled = [s for s in stack.services if s.name not in stack.builds]
    found = credentials({registry_of(s.container.image) for s in pulled}, path)
    secrets: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for spec in pulled:
        registry = registry_of(spec.container.image)
        cred = found.get(registry)
        if cred is None:
            warnings.append(f"service {spec.name}: no credentials for registry {registry} in {path or config_path()}; "
                            "its image is pulled without")
            continue
        value = cred.header().encode()
        name = f"{stack.name}_registry-auth-{hashlib.sha256(value).hexdigest()[:12]}"
        secrets[name] = {"name": name, "external": False, "labels": {"pyswarm.registry": registry},
                         "data": base64.b64encode(value).decode()}
        spec.container.options["registry_auth"] = name
    return list(secrets.values()), list(dict.fromkeys(warnings))
