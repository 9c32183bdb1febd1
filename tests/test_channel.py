"""The party-to-party channel for public messages: typed (JSON header + raw tensor bytes), never unpickled.

A deviating party 0 sends crafted bytes; parties 1 and 2 must reject them with ProtocolMessageError and run none of
their code (the crafted pickle would create a file when unpickled).
"""
import pathlib
import pickle

import pytest
import torch

from secure_lightning.channel import ProtocolMessageError, PublicChannel, decode, encode


class _CreatesFile:
    """Unpickling this object creates `path` (what a malicious peer would do, with a worse command)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _attack(party, payload: bytes, as_blob: bool):
    ch = PublicChannel(party)
    if party.rank == 0:  # the deviating party: speaks the framing, sends a pickle instead of JSON
        if as_blob:
            header = ('{"kind":"metric","error":null,"tensors":[{"dtype":"uint8","shape":[%d]}],'
                      '"body":{"tensor":0}}' % len(payload)).encode()
            ch.send_raw(header, payload)
        else:
            ch.send_raw(payload)
        return None
    try:
        got = ch.publish("metric", None, 0)
    except ProtocolMessageError as e:
        return ("rejected", str(e))
    return ("accepted", type(got).__name__)


@pytest.mark.parametrize("as_blob", [False, True])
def test_crafted_pickle_from_a_peer_is_rejected_and_not_run(parties, tmp_path, as_blob):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(str(marker)))
    pickle.loads(pickle.dumps(_CreatesFile(str(tmp_path / "control"))))  # the payload does run when unpickled
    assert (tmp_path / "control").exists()
    out = parties.run(_attack, payload, as_blob)
    for r in (1, 2):
        assert out[r][0] == "rejected", out[r]
        if not as_blob:
            assert "not UTF-8 JSON" in out[r][1]
        else:  # a byte tensor inside a well-formed message is still only bytes, and a metric must be one number
            assert "outside its schema" in out[r][1]
    assert not marker.exists()


def _roundtrip(party, value, kind):
    return PublicChannel(party).publish(kind, value if party.rank == 1 else None, 1)


def test_public_values_round_trip(parties):
    value = {"path": pathlib.Path("/a/b.ckpt"), "step": 3, "flag": True, "x": 0.1, "none": None,
             "t": torch.arange(6, dtype=torch.int64).reshape(2, 3), "tup": (1, "a"), 7: [torch.tensor(1.5)]}
    out = parties.run(_roundtrip, value, "broadcast")
    for got in out:
        assert got["path"] == value["path"] and got["step"] == 3 and got["flag"] is True and got["x"] == 0.1
        assert got["none"] is None and got["tup"] == (1, "a") and torch.equal(got["t"], value["t"])
        assert torch.equal(got[7][0], torch.tensor(1.5))


def _wrong_kind(party):
    ch = PublicChannel(party)
    if party.rank == 0:
        return ch.publish("broadcast", "hello", 0)
    try:
        ch.publish("metric", None, 0)
    except ProtocolMessageError as e:
        return str(e)


def test_unexpected_kind_is_a_clear_error(parties):
    out = parties.run(_wrong_kind)
    assert out[0] == "hello"
    assert all("'broadcast' message where 'metric' was expected" in m for m in out[1:])


def test_decode_refuses_malformed_headers():
    header, blob = encode("broadcast", {"a": torch.ones(2)})
    assert decode(header, blob, "broadcast", 0)[0]["a"].tolist() == [1.0, 1.0]
    for h, b, words in [
        (header, blob + b"x", "after the last tensor"),
        (header, blob[:-1], "past the end"),
        (b'{"kind":"broadcast","error":null,"tensors":[],"body":{"eval":"1"}}', b"", "unknown or invalid tag"),
        (b'{"kind":"broadcast","error":null,"tensors":[{"dtype":"object","shape":[1]}],"body":null}', b"", "tensor 0"),
        (b'{"kind":"broadcast"}', b"", "keys kind, error"),
        (b"\x80\x04K\x01.", b"", "not UTF-8 JSON"),
    ]:
        with pytest.raises(ProtocolMessageError, match=words):
            decode(h, b, "broadcast", 0)
    with pytest.raises(TypeError, match="cannot be sent between parties"):
        encode("broadcast", object())


def test_no_party_to_party_pickle_in_the_strategy():
    """Peers' bytes reach the strategy only through the channel: no pickle, no broadcast_object_list."""
    import secure_lightning.strategy as strategy_mod
    src = pathlib.Path(strategy_mod.__file__).read_text()
    for word in ("import pickle", "pickle.", "broadcast_object_list(", "frombuffer"):
        assert word not in src, word


# ---------------------------------------------------------------------------------------------------------------------
# The start-up handshake (runs over the channel)

def _handshake(party, overrides):
    from secure_lightning.handshake import HandshakeError, handshake, session_fields
    from secure_lightning.reveal import RevealPolicy
    fields = session_fields(frac_bits=20, insecure_prg=False, policy=RevealPolicy.default(), data_owner=0,
                            model_owner=0, overflow_guard=True, module=torch.nn.Linear(4, 2))
    fields.update(overrides.get(party.rank, {}))
    try:
        handshake(PublicChannel(party), fields)
    except HandshakeError as e:
        return str(e)
    return "ok"


@pytest.mark.parametrize("overrides,words", [
    ({}, None),
    ({1: {"frac_bits": 16}}, "frac_bits differs (party 0: 20, party 1: 16, party 2: 20)"),
    ({2: {"prg": "insecure-torch-mt19937"}}, "PRG kind differs"),
    ({0: {"policy": {"rules": {"loss": None}, "data_owner": 0, "model_owner": 0}}}, "reveal policy differs"),
    ({2: {"model": {"weight": [2, 5], "bias": [2]}}}, "model parameters (names and shapes) differs"),
    ({1: {"version": "0.0.1"}}, "package version differs"),
])
def test_handshake_names_the_field_that_differs(parties, overrides, words):
    out = parties.run(_handshake, overrides)
    if words is None:
        assert out == ["ok"] * 3
    else:
        assert len(set(out)) == 1 and words in out[0], out  # every party stops with the same error
