"""Binary messages: the transpose packer (bitpack) writes exactly the bytes of bit-by-bit packing, and
encode_message / decode_message round-trip for every mix of field sizes and live masks."""
import numpy as np
import pytest
import torch

from secure_lightning import bitpack
from secure_lightning.protocols import binary


def reference_stream(fields, full_raw: bool = True) -> bytes:
    """The message layout spelled out: raw full words, then every packed field's live positions in turn, the bit of
    every word, 8 a byte little-endian across field boundaries."""
    raw, bits = b"", []
    for t, live in fields:
        flat = t.reshape(-1).numpy()
        if live == binary.ALL and full_raw:
            raw += flat.tobytes()
        else:
            for j in binary.positions(live):
                bits += [int((int(w) >> j) & 1) for w in flat]
    return raw + np.packbits(np.array(bits, dtype=np.uint8), bitorder="little").tobytes()


def rand_words(n, g):
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (n,), dtype=torch.int64, generator=g)


@pytest.mark.parametrize("n", [0, 8, 16, 200])
@pytest.mark.parametrize("pos", [list(range(64)), [0, 5, 63], list(range(1, 64, 2)), [63], list(range(7, 40))])
def test_pack_words_matches_bit_by_bit(n, pos):
    g = torch.Generator().manual_seed(n + len(pos))
    flat = rand_words(n, g)
    flat[:min(n, 4)] = torch.tensor([-1, 0, -2 ** 63, 2 ** 63 - 1])[:min(n, 4)]  # edge values
    live = sum(1 << j for j in pos)
    packed = bitpack.pack_words(flat, pos)
    assert packed.numpy().tobytes() == reference_stream([(flat, live)], full_raw=False)
    assert torch.equal(bitpack.unpack_words(packed, n, pos), flat & binary.as_i64(live))


@pytest.mark.parametrize("sizes", [(8, 64, 16), (5, 3, 8), (8, 7, 24), (0, 16, 1)])
def test_messages_match_reference_and_round_trip(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    masks = [binary.ALL, binary.mask_range(0, 63), binary.mask_every(2, 1), 1 << 63, binary.mask_range(3, 6),
             binary.mask_range(0, 8), 0]
    fields = [(rand_words(n, g).reshape(-1, 1) if n else rand_words(0, g), masks[(i * 3 + n) % len(masks)])
              for i, n in enumerate(sizes * 2)]
    msg = binary.encode_message(fields)
    assert msg.numpy().tobytes() == reference_stream(fields)
    assert msg.numel() == binary.message_nbytes([(t.shape, live) for t, live in fields])
    got = binary.decode_message(msg, [(t.shape, live) for t, live in fields], torch.device("cpu"))
    for (t, live), w in zip(fields, got):
        assert w.shape == t.shape and torch.equal(w, t & binary.as_i64(live))
