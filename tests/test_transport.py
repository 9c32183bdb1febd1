"""The two transports under Communicator.round: direct sockets (the default on CPU) and torch.distributed.

Both must deliver the same bytes with the same cost accounting; the socket mesh must move large messages both ways
at once without deadlock and accept only its own peers."""
import os
import socket
import threading
import time

import pytest
import torch

from secure_lightning import runtime
from secure_lightning.comm import PartyTimeoutError
from secure_lightning.protocols.arithmetic import mul
from secure_lightning.protocols.compare import relu
from secure_lightning.protocols.sharing import reveal_float, share
from secure_lightning.transport import TOKEN_BYTES, SocketMesh, TransportError, accept_peers


def _raw_rounds(party):
    """Every dtype and shape the protocols send (0-d, empty, bool, uint8, int64, float) to both peers at once."""
    comm, got = party.comm, []
    g = torch.Generator().manual_seed(party.rank)
    payloads = [torch.randint(-2 ** 62, 2 ** 62, (5, 3), generator=g), torch.tensor(7 * party.rank),
                torch.zeros(0, 4, dtype=torch.int64), torch.rand(3, generator=g) > 0.5,
                torch.randint(0, 256, (9,), dtype=torch.uint8, generator=g), torch.rand(2, 2, generator=g)]
    with comm.cost() as c:
        for t in payloads:
            r = comm.round({comm.next: t, comm.prev: t}, {comm.next: (t.shape, t.dtype), comm.prev: (t.shape, t.dtype)})
            got.append((r[comm.next], r[comm.prev]))
    return payloads, got, (c.bytes, c.messages, c.rounds)


def _protocols(party):
    x = share(torch.linspace(-3, 3, 12).reshape(3, 4) if party.rank == 0 else None, 0, party=party)
    with party.comm.cost() as c:
        y, _ = relu(mul(x, x, party=party) - x, party=party)
        out = reveal_float(y, party=party)
    return out, (c.bytes, c.messages, c.rounds)


def _large_both_ways(party, n):
    """n int64 elements to both peers in the same round: far above any socket buffer."""
    t = torch.full((n,), party.rank, dtype=torch.int64)
    comm = party.comm
    r = comm.round({comm.next: t, comm.prev: t}, {comm.next: ((n,), torch.int64), comm.prev: ((n,), torch.int64)})
    return [int(r[p].min()) == int(r[p].max()) == p for p in r]


def _check_raw(results):
    for rank, (payloads, got, _) in enumerate(results):
        nxt, prv = (rank + 1) % 3, (rank - 1) % 3
        for i, (from_next, from_prev) in enumerate(got):
            assert torch.equal(from_next, results[nxt][0][i]) and torch.equal(from_prev, results[prv][0][i])


@pytest.fixture(scope="module")
def dist_pool():
    pool = runtime.PartyPool(timeout=float(os.environ.get("SECURE_LIGHTNING_TEST_TIMEOUT", 60)), transport="dist")
    pool.start()
    yield pool
    pool.close()


def test_socket_and_dist_transports_agree(parties, dist_pool):
    raw_s, raw_d = parties.run(_raw_rounds), dist_pool.run(_raw_rounds)
    _check_raw(raw_s)
    _check_raw(raw_d)
    assert [r[2] for r in raw_s] == [r[2] for r in raw_d]
    assert raw_s[0][2][2] == 6 and raw_s[0][2][1] == 12  # one round per payload, one message per peer
    prot_s, prot_d = parties.run(_protocols), dist_pool.run(_protocols)
    x = torch.linspace(-3, 3, 12).reshape(3, 4).double()
    want = torch.relu(x * x - x)
    for out, cost in prot_s + prot_d:
        assert torch.allclose(out, want, atol=1e-4)
    assert [c for _, c in prot_s] == [c for _, c in prot_d]  # the same bytes, messages and rounds


def test_socket_mesh_large_messages_both_ways(parties):
    assert all(all(ok) for ok in parties.run(_large_both_ways, 3_000_000))


def test_socket_timeout_names_peer_and_label():
    """A peer that never answers, or closes: PartyTimeoutError with the peer, the label and the timeout."""
    from secure_lightning.comm import Communicator
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    comm = Communicator(0, timeout=0.3, transport=SocketMesh(0, {1: a, 2: c}))
    t0 = time.monotonic()
    with comm.label("relu"), pytest.raises(PartyTimeoutError, match=r"recv with party 1 .*'relu' \(timeout 0.3s\)"):
        comm.round({}, {1: ((4,), torch.int64)})
    assert time.monotonic() - t0 < 5
    b.close()
    with pytest.raises(PartyTimeoutError, match="recv with party 1.*closed"):
        comm.round({}, {1: ((4,), torch.int64)})
    for s in (a, c, d):
        s.close()


def test_socket_error_names_the_peer_that_closed_first():
    """Party 2 dies while party 0 waits on party 1; then party 1 stops too: the error names party 2."""
    from secure_lightning.comm import Communicator
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    comm = Communicator(0, timeout=5, transport=SocketMesh(0, {1: a, 2: c}))
    threading.Timer(0.2, d.close).start()
    threading.Timer(0.6, b.close).start()
    with pytest.raises(PartyTimeoutError, match=r"connection with party 2 .*party 2 closed its connection first"):
        comm.round({2: torch.zeros(3, dtype=torch.int64)}, {1: ((4,), torch.int64)})
    a.close()
    c.close()


def test_accept_peers_ignores_strangers():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    token, port = os.urandom(TOKEN_BYTES), srv.getsockname()[1]
    kept = []

    def dial(hello):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(hello)
        kept.append(s)

    def clients():
        dial(bytes([2]) + os.urandom(TOKEN_BYTES))  # wrong token
        dial(bytes([0]) + token)  # a rank that must not dial rank 1
        dial(b"\x02")  # too short, then silence... closed by the listener's deadline or by the next line
        kept[-1].close()
        dial(bytes([2]) + token)  # the real party 2

    th = threading.Thread(target=clients)
    th.start()
    socks = accept_peers(srv, 1, token, time.monotonic() + 20, 20)
    th.join()
    assert list(socks) == [2]
    kept[-1].sendall(b"ok")
    assert socks[2].recv(2) == b"ok"
    with pytest.raises(TransportError, match="did not connect"):
        accept_peers(srv, 0, token, time.monotonic() + 0.2, 0.2)
    for s in kept + list(socks.values()) + [srv]:
        s.close()
