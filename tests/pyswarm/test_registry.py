"""Registry credentials as the docker CLI reads them (pyswarm/registry.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from pyswarm.compose import load_stack
from pyswarm.errors import UsageError
from pyswarm.registry import Credential, attach, credentials, registry_of


@pytest.mark.parametrize("image, registry", [
    ("nginx", "docker.io"), ("me/app:1", "docker.io"), ("localhost/app", "localhost"),
    ("reg.example.com/a/b:2", "reg.example.com"), ("10.0.0.5:5000/app", "10.0.0.5:5000"), ("host:5000/x", "host:5000"),
])
def test_registry_of(image: str, registry: str) -> None:
    assert registry_of(image) == registry


def _config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_inline_auths_and_tokens(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"me:s3cret:with:colons").decode()},
        "reg.example.com": {"identitytoken": "tok"}}})
    found = credentials({"docker.io", "reg.example.com", "other.example"}, path)
    assert found == {"docker.io": Credential("docker.io", "me", "s3cret:with:colons"),
                     "reg.example.com": Credential("reg.example.com", identity_token="tok")}
    header = json.loads(base64.urlsafe_b64decode(found["docker.io"].header()))
    assert header == {"serveraddress": "https://index.docker.io/v1/", "username": "me", "password": "s3cret:with:colons"}
    assert "s3cret" not in repr(found["docker.io"])
    assert credentials({"docker.io"}, tmp_path / "absent.json") == {}


def test_credential_helpers_win_over_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n[ "$1" = get ] || exit 3\n'
                      'case "$server" in reg.example.com) echo \'{"Username":"<token>","Secret":"T"}\';;\n'
                      '*) echo "credentials not found in native keychain"; exit 1;; esac\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    path = _config(tmp_path, {"credHelpers": {"reg.example.com": "fake"}, "credsStore": "fake",
                              "auths": {"reg.example.com": {"auth": base64.b64encode(b"a:b").decode()}}})
    assert credentials({"reg.example.com", "docker.io"}, path) == {
        "reg.example.com": Credential("reg.example.com", identity_token="T")}
    broken = _config(tmp_path, {"credsStore": "missing-helper"})
    with pytest.raises(UsageError, match="docker-credential-missing-helper .* is not installed"):
        credentials({"docker.io"}, broken)


def test_bad_inline_auth_is_named(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"reg.example.com": {"auth": base64.b64encode(b"nocolon").decode()}}})
    with pytest.raises(UsageError, match=r"auths.reg.example.com.auth is not base64 of USER:PASSWORD"):
        credentials({"reg.example.com"}, path)


def test_attach_points_pulled_services_at_one_secret_per_registry(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    stack_file = tmp_path / "s.yml"
    stack_file.write_text("services:\n  a: {image: reg.example.com/a:1}\n  b: {image: reg.example.com/b:1}\n"
                          "  c: {image: nginx}\n  d: {build: ./ctx}\n")
    stack = load_stack([stack_file], "demo", {})
    path = _config(tmp_path, {"auths": {"reg.example.com": {"auth": base64.b64encode(b"u:p").decode()}}})
    secrets, warnings = attach(stack, path)
    assert len(secrets) == 1 and secrets[0]["name"].startswith("demo_registry-auth-")
    by = {s.name: s.container.options.get("registry_auth") for s in stack.services}
    assert by == {"demo_a": secrets[0]["name"], "demo_b": secrets[0]["name"], "demo_c": None, "demo_d": None}
    assert warnings == [f"service demo_c: no credentials for registry docker.io in {path}; its image is pulled without"]
    value = base64.b64decode(secrets[0]["data"]).decode()
    assert json.loads(base64.urlsafe_b64decode(value))["password"] == "p"
