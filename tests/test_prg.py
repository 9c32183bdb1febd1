"""PRG streams: AES-CTR output, pairwise agreement, zero-sharing, fresh keys per session.

The party tests draw the same amounts from prg_next and prg_prev on every party, so the pool's streams stay in step.
"""
import pathlib
import re

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_lightning import prg as prg_mod
from secure_lightning.party import Party
from secure_lightning.protocols.sharing import random_shares, reveal, zero_share

# NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt: key, initial counter block, first plaintext and ciphertext block
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_CTR = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_P1 = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
NIST_C1 = bytes.fromhex("874d6191b620e3261bef6864990db6ce")


def test_aes_ctr_stream_matches_nist_vector():
    keystream = bytes(prg_mod.AesCtrPRG(NIST_KEY, NIST_CTR).random_bytes(16))
    assert bytes(a ^ b for a, b in zip(keystream, NIST_P1)) == NIST_C1


def test_aes_ctr_stream_matches_cryptography_and_is_continuous():
    key = bytes(range(16))
    want = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * 1000 + 37))
    p = prg_mod.AesCtrPRG(key)
    got = bytes(p.random_bytes(37)) + bytes(p.random_bytes(0)) + p.ring((10, 100)).numpy().tobytes()
    assert got == want  # split draws continue one stream; ring() reads the bytes as little-endian int64
    assert p.bytes_drawn == len(want)
    assert torch.equal(prg_mod.AesCtrPRG(key).ring((3,)), torch.frombuffer(bytearray(want[:24]), dtype=torch.int64))
    assert prg_mod.AesCtrPRG(key).ring((0, 4)).shape == (0, 4)


def test_buffered_and_direct_draws_continue_one_stream():
    """Small draws come from keystream generated ahead, large ones straight from the cipher: any mix of sizes reads
    the stream in order (sizes around the buffer's thresholds included)."""
    key = bytes(range(1, 17))
    want = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(1_200_000))
    p, got = prg_mod.AesCtrPRG(key), b""
    buf = prg_mod.AesCtrPRG.BUFFER
    sizes = [1, 7, 8, 800, buf // 4 - 1, buf // 4, buf // 4 + 1, 3, buf, 5, 200_000, 9, buf - 3, 16, 8 * 1001, 0]
    for i, n in enumerate(sizes * 3):
        got += bytes(p.random_bytes(n)) if i % 2 or n % 8 else p.ring((n // 8,)).numpy().tobytes()
    assert got == want[:len(got)] and p.bytes_drawn == len(got)
    q = prg_mod.AesCtrPRG(key)
    a = q.ring((4,))
    a += 1  # a draw is the caller's own memory: changing it changes no later draw
    assert q.ring((2,)).numpy().tobytes() == want[32:48]


def test_ring_draws_cover_the_whole_ring():
    r = prg_mod.AesCtrPRG(bytes(16)).ring((1 << 16,))
    assert (r < 0).any() and (r > 0).any()
    bits = torch.stack([(r >> i) & 1 for i in range(64)]).double().mean(1)
    assert ((bits - 0.5).abs() < 0.02).all()  # every bit, top included, is balanced (sd 0.002)
    b = prg_mod.AesCtrPRG(bytes(16)).bits((1000,))
    assert set(b.unique().tolist()) == {0, 1}


def test_key_agreement_is_symmetric_and_pair_specific():
    a, b, c = prg_mod.KeyAgreement(), prg_mod.KeyAgreement(), prg_mod.KeyAgreement()
    kab = a.shared_key(b.public_bytes(), prg_mod.pair_info(0, 1))
    assert kab == b.shared_key(a.public_bytes(), prg_mod.pair_info(1, 0)) and len(kab) == 16
    assert kab != a.shared_key(c.public_bytes(), prg_mod.pair_info(0, 2))
    assert kab != a.shared_key(b.public_bytes(), prg_mod.pair_info(0, 1, b"other session"))


def _draws(party, n):
    return {
        "next": party.prg_next.ring((n,)), "prev": party.prg_prev.ring((n,)),
        "common": party.prg_common.ring((n,)), "own": party.prg_own.ring((n,)),
        "insecure": party.insecure_prg, "aes": type(party.prg_next).__name__,
    }


def test_pair_streams_agree_and_differ_between_pairs(parties):
    d = parties.run(_draws, 64)
    for i in range(3):
        j = (i + 1) % 3
        assert torch.equal(d[i]["next"], d[j]["prev"]), f"P{i}.prg_next must equal P{j}.prg_prev"
        assert not torch.equal(d[i]["next"], d[i]["prev"]), "a party's two pair streams must differ"
        assert not torch.equal(d[i]["next"], d[j]["next"])
        assert torch.equal(d[i]["common"], d[0]["common"])
        assert not torch.equal(d[i]["own"], d[j]["own"])
        assert not torch.equal(d[i]["own"], d[i]["common"])
        assert d[i]["aes"] == "AesCtrPRG" and d[i]["insecure"] is False


def _zero_and_random(party, shape):
    z = zero_share(shape, party=party)
    r = random_shares(shape, party=party)
    return z, r, reveal(r, party=party)


def test_zero_sharing_sums_to_zero_and_random_shares_are_replicated(parties):
    shape = (5, 7)
    res = parties.run(_zero_and_random, shape)
    zs = [z for z, _, _ in res]
    assert torch.equal(zs[0] + zs[1] + zs[2], torch.zeros(shape, dtype=torch.int64))
    assert all((z != 0).float().mean() > 0.9 for z in zs)  # each alpha_i on its own looks random
    rs = [r for _, r, _ in res]
    for i in range(3):
        assert torch.equal(rs[i].prev, rs[(i - 1) % 3].cur)  # P_i's x_{i-1} is P_{i-1}'s x_{i-1}
    total = rs[0].cur + rs[1].cur + rs[2].cur
    assert all(torch.equal(opened, total) for _, _, opened in res)


def _zero_xor(party, shape):
    from secure_lightning.protocols.binary import zero_xor_share
    return zero_xor_share(shape, party=party)


def test_xor_zero_sharing_xors_to_zero(parties):
    binary = pytest.importorskip("secure_lightning.protocols.binary")
    if not hasattr(binary, "zero_xor_share"):
        pytest.skip("protocols.binary has no zero_xor_share")
    a, b, c = parties.run(_zero_xor, (6, 5))
    assert torch.equal(a ^ b ^ c, torch.zeros(6, 5, dtype=torch.int64))
    assert all((t != 0).float().mean() > 0.9 for t in (a, b, c))


def _new_session(party, n):
    """A second key agreement over the same connection: new X25519 keys and common contribution."""
    fresh = Party.connect(party.comm)
    new_next, new_prev = fresh.prg_next.ring((n,)), fresh.prg_prev.ring((n,))
    old_next, old_prev = party.prg_next.ring((n,)), party.prg_prev.ring((n,))  # both ends draw: streams in step
    assert not torch.equal(old_prev, new_prev)
    return old_next, new_next, new_prev, party.prg_common.ring((n,)), fresh.prg_common.ring((n,))


def test_keys_are_fresh_per_session(parties):
    res = parties.run(_new_session, 32)
    for i in range(3):
        old_next, new_next, _, old_common, new_common = res[i]
        assert not torch.equal(old_next, new_next) and not torch.equal(old_common, new_common)
        assert torch.equal(new_next, res[(i + 1) % 3][2])  # the new session's pairs agree too


def test_no_non_cryptographic_generators_in_library():
    """Project rule: correlated randomness comes from party.prg_* only (insecure_prg.py is the labelled exception)."""
    root = pathlib.Path(prg_mod.__file__).parent
    bad = re.compile(r"manual_seed|torch\.Generator|torch\.rand(n|int|perm)?\(|(^|[^.\w])random\.\w+\(|np\.random")
    offenders, files = [], sorted(root.rglob("*.py"))
    assert len(files) >= 10 and root / "prg.py" in files
    for path in files:
        if path.name == "insecure_prg.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if bad.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(root)}:{no}: {line.strip()}")
    assert not offenders, "non-cryptographic randomness in secure_lightning/:\n" + "\n".join(offenders)
