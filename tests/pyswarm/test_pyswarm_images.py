"""The image channel's messages and layer chains (pyswarm/images.py)."""

from __future__ import annotations

import json

import pytest

from pyswarm.images import (
    ChannelRequest,
    HaveReply,
    ImageDone,
    ImagePlan,
    ImageWanted,
    LoadReply,
    MessageError,
    NodeImage,
    chain_ids,
    check_ref,
    inventory_from_line,
    inventory_line,
)

H = "sha256:" + "a" * 64


def test_chain_ids_match_dockerd_layerdb() -> None:
    # an image built on the lab's dockerd 20.10: RootFS.Layers, and the
    # directories of image/overlay2/layerdb/sha256/ that it made for them
    diffs = ["sha256:f92639ddd20303918287c82290e59388af7532806fbcf3c0994d128e8b0995d3",
             "sha256:366020209acbfc9c4a80413231d3019068a0a758a5b33aac7a2c3092435ad0c8",
             "sha256:a6582529f61e37bf2cc778b0a009ada34fa4741bcd46b723b07ce8d9b55663fd"]
    assert chain_ids(diffs) == [
        "sha256:f92639ddd20303918287c82290e59388af7532806fbcf3c0994d128e8b0995d3",
        "sha256:d66cdc9b99f4346c8b46e9aa2933970e3b3a3afed5b57ebc724ff9edacc66b08",
        "sha256:f86018a3f945be6cd8da0958120a38e4482de0a1894b52b402de0215dbfbf4e8"]
    assert chain_ids([]) == []


def test_same_layer_in_another_place_is_another_chain() -> None:
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert chain_ids([a, b])[1] != chain_ids([b, a])[1]
    assert chain_ids([b])[0] == b


@pytest.mark.parametrize("ref", ["busybox", "demo_web:3f2a", "host:5000/a/b:1", "r/a@" + H, H])
def test_refs_accepted(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", " x", "a b", "x;rm -rf /", "-x", "a" * 600, 5, None])
def test_refs_refused(ref: object) -> None:
    with pytest.raises(MessageError, match="image"):
        check_ref(ref)


def test_requests_round_trip() -> None:
    for req in (ChannelRequest("have", image="a:1", image_id=H), ChannelRequest("inventory"),
                ChannelRequest("remove", images=("a:1", H))):
        assert ChannelRequest.from_line(req.to_line()) == req


@pytest.mark.parametrize("line, field", [
    (b"not json", "not JSON"),
    (b'{"op": "format-disk"}', "op: unknown"),
    (b'{"op": "have", "image": "a:1", "image_id": "sha256:xyz"}', "image_id"),
    (b'{"op": "have", "image": "a b", "image_id": "' + H.encode() + b'"}', "image"),
    (b'{"op": "remove", "images": ["ok:1", 7]}', r"images\[1\]"),
    (b'[1, 2]', "not an image channel message"),
])
def test_bad_requests_name_the_field(line: bytes, field: str) -> None:
    with pytest.raises(MessageError, match=field):
        ChannelRequest.from_line(line)


def test_replies_round_trip_and_are_checked() -> None:
    have = HaveReply(False, frozenset({H}))
    assert HaveReply.from_line(have.to_line()) == have
    load = LoadReply(True, ("a:1",))
    assert LoadReply.from_line(load.to_line()) == load
    with pytest.raises(MessageError, match="chains"):
        HaveReply.from_line(json.dumps({"op": "have", "present": False, "chains": ["nope"]}).encode())
    with pytest.raises(MessageError, match="present"):
        HaveReply.from_line(b'{"op": "have", "present": "yes"}')
    with pytest.raises(MessageError, match="loaded"):
        LoadReply.from_line(b'{"op": "have", "ok": true}')
    images = [NodeImage(H, ("a:1",), (), 10)]
    assert inventory_from_line(inventory_line(images)) == images
    with pytest.raises(MessageError, match=r"images\[0\].size"):
        inventory_from_line(json.dumps({"op": "inventory", "images": [{"id": H, "size": -1}]}).encode())


def test_agent_channel_messages() -> None:
    assert ImageWanted.from_message(ImageWanted("a:1", "t1").to_message()) == ImageWanted("a:1", "t1")
    plan = ImagePlan("a:1", "ship", "manager1")
    assert ImagePlan.from_message(plan.to_message()) == plan
    assert ImageDone.from_message(ImageDone("a:1", "boom").to_message()) == ImageDone("a:1", "boom")
    with pytest.raises(MessageError, match="plan"):
        ImagePlan.from_message({"op": "image_plan", "image": "a:1", "plan": "beam"})
    with pytest.raises(MessageError, match="image"):
        ImageWanted.from_message({"op": "image_wanted", "image": 3})
    assert NodeImage.from_engine({"Id": H, "RepoTags": ["<none>:<none>"], "RepoDigests": None, "Size": 3}).tags == ()
