"""Every API method refuses a request of the wrong shape before it acts.

Against a real single-manager store: each method with wrong types, missing
fields, unknown fields and huge values gets a one-line error naming the
field, and the store's index does not move; generated garbage (hypothesis)
gets a clear error or a correct answer, never another exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from test_store import free_port, started  # noqa: E402

from pyswarm.errors import PyswarmError, UsageError  # noqa: E402
from pyswarm.manager.api import Api, Self  # noqa: E402
from pyswarm.manager.servers import parse_request  # noqa: E402
from pyswarm.models import Cluster  # noqa: E402
from pyswarm.wire import BadRequest  # noqa: E402


class LiveApi:
    """A real store and API on an event loop in a thread, for sync tests."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = free_port()
        self.store = self.run(started(tmp, self.port))
        cluster = Cluster(id="c1", ssh_public_key="ssh-ed25519 AAAA", worker_token_secret="w" * 25)
        self.run(self.store.commit([["put", "cluster", cluster.id, cluster.to_dict()]]))
        self.api = Api(self.store, Self("n0", "127.0.0.1", 2377, "f" * 52))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def call(self, method: str, params: Any) -> Any:
        return self.run(self.api.call(method, params))

    def index(self) -> int:
        return self.store.snapshot().index

    def close(self) -> None:
        self.store.stop()
        # pysyncobj closes its sockets on its own thread after destroy(): wait
        # until its Raft port is free, or the socket outlives the session
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", self.port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"Raft port {self.port} still bound 10 s after stop()"
            time.sleep(0.05)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    api = LiveApi(tmp_path_factory.mktemp("api-requests"))
    yield api
    api.close()


def _methods(live: LiveApi) -> dict[str, type]:
    return {name: live.api._methods[name].request for name in live.api.method_names}


@pytest.mark.parametrize("method, params, message", [
    ("stack.deploy", {"stack": "demo", "services": [{"name": "demo_web", "container": {"image": "i"},
                                                     "replicas": "3"}]},
     "^services\\[0\\].replicas: expected an integer, got the string '3'$"),
    ("stack.deploy", {"stack": "demo"}, "^services: missing \\(required\\)$"),
    ("stack.deploy", {"stack": "demo", "services": [{"name": "demo_web", "container": {"image": "i"},
                                                     "constraints": ["node.labels.example.com/zone==eu"]}]},
     "^demo_web: invalid constraint 'node.labels.example.com/zone==eu': bad key"),
    ("stack.deploy", {"stack": "Demo!", "services": []}, "^stack: 'Demo!' is not valid here"),
    ("service.scale", {"scale": {"web": 3}}, "^scale: unknown field"),
    ("service.scale", {"scales": {"web": "3"}}, "^scales.web: expected an integer, got the string '3'$"),
    ("service.scale", {"scales": ["web=3"]}, "^scales: expected a mapping, got a list$"),
    ("service.update", {"service": "web", "replicas": -1}, "^replicas: -1 is below the minimum 0$"),
    ("node.update", {"node": "n", "availability": "off"}, "^availability: expected one of"),
    ("node.update", {"node": "n", "label_add": {"k": 1}}, "^label_add.k: expected a string, got the number 1$"),
    ("node.rm", {"nodes": "n1"}, "^nodes: expected a list, got the string 'n1'$"),
    ("join", {"hostname": "h", "addr": "not-an-ip", "ssh_host_key": "k"}, "^addr: 'not-an-ip' is not an IP"),
    ("join", {"hostname": "h", "addr": "10.0.0.9", "ssh_host_key": "k", "ssh_port": 70000},
     "^ssh_port: 70000 is above the maximum 65535$"),
    ("secret.create", {"name": "x", "data": 5}, "^data: expected a string, got the number 5$"),
    ("network.create", {"name": "n" * 300}, "^name: longer than 256 characters \\(300\\)$"),
    ("service.inspect", {"service": "x" * 10_000}, "^service: longer than 256 characters"),
    ("node.ls", {"verbose": True}, "^verbose: unknown field"),
    ("cluster.update", {"task_history_limit": 1e9}, "^task_history_limit: expected an integer"),
])
def test_a_request_of_the_wrong_shape_names_the_field_and_changes_nothing(
        live: LiveApi, method: str, params: dict[str, Any], message: str) -> None:
    before = live.index()
    with pytest.raises(UsageError, match=message):
        live.call(method, params)
    assert live.index() == before, f"{method} {params} moved the store from {before} to {live.index()}"


def test_every_method_refuses_unknown_fields_and_non_mappings(live: LiveApi) -> None:
    for name in _methods(live):
        with pytest.raises(BadRequest, match="unknown field"):
            live.call(name, {"zz_not_a_field": 1})
        with pytest.raises(BadRequest, match="expected a mapping"):
            live.call(name, [1, 2])


def test_every_required_field_is_named_when_missing(live: LiveApi) -> None:
    for name, request in _methods(live).items():
        for f in dataclasses.fields(request):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                with pytest.raises(BadRequest, match=f"^{f.name}: missing"):
                    live.call(name, {})
                break


def test_an_unknown_method_is_refused_by_name(live: LiveApi) -> None:
    with pytest.raises(UsageError, match="unknown API method 'service.destroy'"):
        live.call("service.destroy", {})


@pytest.mark.parametrize("line, message", [
    (b"\xff\xfe\n", "not UTF-8"),
    (b"{not json\n", "not JSON"),
    (b"[]\n", "expected a mapping"),
    (b'{"method": 5}\n', "^method: expected a string"),
    (b'{"method": "ping", "params": []}\n', "^params: expected a mapping"),
    (b'{"method": "ping", "id": 1}\n', "^id: unknown field"),
])
def test_a_request_line_that_is_not_a_request_is_refused_with_why(line: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbage_requests_get_an_error_or_an_answer_and_a_refusal_changes_nothing(
        live: LiveApi, data: st.DataObject) -> None:
    names = live.api.method_names
    method = data.draw(st.sampled_from(names))
    fields = [f.name for f in dataclasses.fields(_methods(live)[method])]
    keys = st.sampled_from([*fields, "junk"]) if fields else st.just("junk")
    params = data.draw(st.dictionaries(keys, json_values, max_size=5) | json_values)
    if isinstance(params, dict):
        params.pop("role", None)  # the server sets join's role from the token; a manager join waits for Raft
    before = live.index()
    try:
        live.call(method, params)
    except PyswarmError:
        assert live.index() == before, f"refused {method} {params!r} still moved the store"
