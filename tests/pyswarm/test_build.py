"""Build contexts, content tags and the build step of stack deploy (pyswarm/build.py)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyswarm.build import (
    LABEL_BUILD_HASH,
    BuildError,
    EngineBuilder,
    build_params,
    build_services,
    make_context,
)
from pyswarm.compose.build import BuildSpec


def _names(ctx: Any) -> list[str]:
    ctx.file.seek(0)
    data = ctx.file.read()
    ctx.file.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted(m.name for m in tar)


def _digest(spec: BuildSpec) -> str:
    ctx = make_context("s", spec)
    ctx.file.close()
    return ctx.digest


def _ctx(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_dockerignore_with_exceptions_and_double_star(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"Dockerfile": "FROM x\n", "app/main.py": "", "app/cache/x.pyc": "", "node_modules/a/b": "",
                          "logs/keep.log": "", "logs/drop.log": "", ".dockerignore":
                          "node_modules\n**/*.pyc\nlogs/*.log\n!logs/keep.log\n# comment\n"})
    names = _names(make_context("s", BuildSpec(context=str(ctx))))
    assert "app/main.py" in names and "logs/keep.log" in names and "Dockerfile" in names
    assert not [n for n in names if n.endswith(".pyc") or "node_modules" in n or n == "logs/drop.log"], names


def test_tag_follows_content_and_options_not_times(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"Dockerfile": "FROM x\nCOPY a /a\n", "a": "one"})
    spec = BuildSpec(context=str(ctx))
    first = _digest(spec)
    (ctx / "a").touch()
    assert _digest(spec) == first
    assert _digest(BuildSpec(context=str(ctx), args={"V": "2"})) != first
    (ctx / "a").write_text("two")
    assert _digest(spec) != first


def test_inline_and_outside_dockerfiles_go_into_the_tar(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path / "ctx", {"a": "1"})
    (tmp_path / "Dockerfile.out").write_text("FROM x\n")
    inline = make_context("s", BuildSpec(context=str(ctx), dockerfile_inline="FROM y\n"))
    assert inline.dockerfile in _names(inline)
    outside = make_context("s", BuildSpec(context=str(ctx), dockerfile="../Dockerfile.out"))
    assert outside.dockerfile in _names(outside) and outside.dockerfile != "../Dockerfile.out"
    with pytest.raises(BuildError, match="no Dockerfile"):
        make_context("s", BuildSpec(context=str(ctx)))
    with pytest.raises(BuildError, match="is not a directory"):
        make_context("s", BuildSpec(context=str(tmp_path / "nope")))


def test_build_params_carry_every_option() -> None:
    spec = BuildSpec(context="/c", args={"A": "1"}, labels={"l": "v"}, cache_from=("c:1",), extra_hosts={"db": "10.0.0.1"},
                     network="host", target="t", shm_size=1024, platforms=("linux/amd64",), no_cache=True)
    params = dict(build_params(spec, "s:abc", "Dockerfile", "abc"))
    assert params["t"] == "s:abc" and json.loads(params["buildargs"]) == {"A": "1"} and params["target"] == "t"
    assert json.loads(params["labels"]) == {"l": "v", LABEL_BUILD_HASH: "abc"}
    assert (params["networkmode"], params["shmsize"], params["extrahosts"], params["platform"], params["nocache"]) == \
        ("host", "1024", "db:10.0.0.1", "linux/amd64", "1")


class Engine:
    """The engine's /build: fails at the step that runs `false`."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.builds: list[str] = []
        self.socket = "/fake.sock"

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return self.images.get(ref)

    async def build_image(self, params: list[tuple[str, str]], body: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
        data = b"".join([c async for c in body])
        p = dict(params)
        self.builds.append(p["t"])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            f = tar.extractfile(p["dockerfile"])
            assert f is not None
            steps = f.read().decode().splitlines()
        for i, step in enumerate(steps, 1):
            yield {"stream": f"Step {i}/{len(steps)} : {step}\n"}
            if step == "RUN false":
                yield {"stream": " ---> Running in 0123\n"}
                yield {"error": "The command '/bin/sh -c false' returned a non-zero code: 1"}
                return
        self.images[p["t"]] = {"Id": "sha256:" + "c" * 64, "Config": {"Labels": json.loads(p["labels"])}}
        yield {"aux": {"ID": "sha256:" + "c" * 64}}


def test_build_once_then_unchanged_then_forced(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"Dockerfile": "FROM x\n"})
    engine = Engine()
    builds = {"demo_web": BuildSpec(context=str(ctx))}

    def run(mode: str) -> Any:
        return asyncio.run(build_services(builds, {}, mode, EngineBuilder(engine)))

    planned = run("plan")["demo_web"]  # --dry-run: the tag it would build, nothing built
    assert planned.action == "would build" and engine.builds == []
    first = run("auto")["demo_web"]
    assert first.ref == planned.ref
    assert first.action == "built" and first.ref.startswith("demo_web:") and len(first.ref) == len("demo_web:") + 12
    assert run("auto")["demo_web"].action == "unchanged"
    assert run("always")["demo_web"].action == "built"
    assert run("never")["demo_web"].action == "unchanged"
    assert run("plan")["demo_web"].action == "unchanged"
    (ctx / "Dockerfile").write_text("FROM x\nRUN true\n")
    with pytest.raises(BuildError, match="is not built, and --no-build"):
        run("never")


def test_failed_build_names_the_service_and_shows_the_failing_step(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"Dockerfile": "FROM x\nRUN true\nRUN false\n"})
    with pytest.raises(BuildError) as info:
        asyncio.run(build_services({"demo_web": BuildSpec(context=str(ctx))}, {}, "auto", EngineBuilder(Engine())))
    text = str(info.value)
    assert text.startswith("service demo_web: build failed: The command '/bin/sh -c false' returned")
    assert "Step 3/3 : RUN false" in text and "Step 2/3" not in text


def test_what_the_classic_builder_cannot_do_is_refused_before_building(tmp_path: Path) -> None:
    engine = Engine()
    for spec, needle in [(BuildSpec(context=str(tmp_path), secrets=("s",)), "BuildKit"),
                         (BuildSpec(context=str(tmp_path), platforms=("linux/amd64", "linux/arm64")), "one platform")]:
        with pytest.raises(BuildError, match=needle):
            asyncio.run(build_services({"demo_web": spec}, {}, "auto", EngineBuilder(engine)))
    assert engine.builds == []


def test_a_given_image_name_is_rebuilt_when_its_content_hash_differs(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, {"Dockerfile": "FROM x\n"})
    engine = Engine()
    builds = {"demo_web": BuildSpec(context=str(ctx))}
    given = {"demo_web": "me/web:latest"}
    assert asyncio.run(build_services(builds, given, "auto", EngineBuilder(engine)))["demo_web"].ref == "me/web:latest"
    assert asyncio.run(build_services(builds, given, "auto", EngineBuilder(engine)))["demo_web"].action == "unchanged"
    (ctx / "Dockerfile").write_text("FROM y\n")
    assert asyncio.run(build_services(builds, given, "auto", EngineBuilder(engine)))["demo_web"].action == "built"
