"""Byte transports under `Communicator.round`: direct TCP sockets between the parties, or torch.distributed.

`SocketMesh` (CPU parties, the default with gloo) keeps one TCP connection to each peer and moves a round's payload
with non-blocking send/recv and poll in the calling thread: no message header, no background thread, no hand-off
between threads. A round then costs a few system calls per peer (tens of microseconds on loopback), where gloo's
isend/irecv/wait cost about half a millisecond. The bytes on the wire are exactly the tensors' bytes, in the order of
the rounds: each receiver knows the shape and dtype it expects, so the stream needs no framing.

Setting up (`SocketMesh.connect`) uses the already joined torch.distributed group once: every party listens on a
fresh port and all-gathers a fixed-size uint8 record (address family, address, port, 16 random bytes) - plain bytes,
nothing is unpickled. Party i connects to every party j < i and opens with its rank and j's 16 random bytes; the
listener accepts only that, so a stray connection cannot take a party's place. Set-up traffic is not counted in the
communication statistics (as gloo's own handshake is not).

`DistTransport` is the torch.distributed path (isend/irecv; NCCL for GPU parties). Both raise `TransportError`
naming the peer and the direction when a peer closes its connection or makes no progress within the timeout.
"""
from __future__ import annotations

import datetime
import hmac
import ipaddress
import os
import select
import socket
import time

import torch
import torch.distributed as dist

TOKEN_BYTES = 16
_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer shut its side down
_RECORD = 1 + 16 + 2 + TOKEN_BYTES  # family (4 or 6), address (16 bytes, IPv4 in the first 4), port, token


class TransportError(RuntimeError):
    def __init__(self, kind: str, peer: int, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.kind, self.peer, self.timed_out = kind, peer, timed_out


def local_address(master_addr: str) -> str:
    """The address of this host's interface that routes to `master_addr` (no packet is sent)."""
    try:
        info = socket.getaddrinfo(master_addr, 1, type=socket.SOCK_DGRAM)[0]
        with socket.socket(info[0], socket.SOCK_DGRAM) as s:
            s.connect(info[4])
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _pack(host: str, port: int, token: bytes) -> torch.Tensor:
    ip = ipaddress.ip_address(host)
    raw = ip.packed.ljust(16, b"\0")
    rec = bytes([ip.version]) + raw + port.to_bytes(2, "big") + token
    return torch.frombuffer(bytearray(rec), dtype=torch.uint8)


def _unpack(t: torch.Tensor) -> tuple[str, int, bytes]:
    rec = bytes(t.tolist())
    version, raw = rec[0], rec[1:17]
    ip = ipaddress.IPv4Address(raw[:4]) if version == 4 else ipaddress.IPv6Address(raw)
    return str(ip), int.from_bytes(rec[17:19], "big"), rec[19:]


class SocketMesh:
    """TCP connections from one party to its two peers; `exchange` runs one round over them."""

    def __init__(self, rank: int, socks: dict):
        self.rank = rank
        self.socks = socks
        for s in socks.values():
            if s.family in (socket.AF_INET, socket.AF_INET6):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a round's bytes leave at once
            s.setblocking(False)
        self._peer_of_fd = {s.fileno(): p for p, s in socks.items()}
        self._hup: dict = {}  # peer -> when its hang-up was first seen while waiting on the other peer

    @classmethod
    def connect(cls, rank: int, master_addr: str, timeout: float = 120.0, group=None) -> "SocketMesh":
        """Open the mesh over an initialized torch.distributed group of 3 (see the module docstring)."""
        host = local_address(master_addr)
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        srv = socket.socket(family, socket.SOCK_STREAM)
        try:
            srv.bind((host, 0))
            srv.listen(4)
            token = os.urandom(TOKEN_BYTES)
            recs = [torch.empty(_RECORD, dtype=torch.uint8) for _ in range(3)]
            dist.all_gather(recs, _pack(host, srv.getsockname()[1], token), group=group)
            peers = [_unpack(r) for r in recs]
            deadline = time.monotonic() + timeout
            socks = {}
            for j in range(rank):
                h, port, their_token = peers[j]
                s = socket.create_connection((h, port), timeout=max(1.0, deadline - time.monotonic()))
                s.sendall(bytes([rank]) + their_token)
                socks[j] = s
            socks.update(accept_peers(srv, rank, token, deadline, timeout))
            for s in socks.values():
                s.settimeout(None)
            return cls(rank, socks)
        finally:
            srv.close()

    def exchange(self, sends: dict, recvs: dict, timeout: float) -> None:
        """Send `sends[peer]` and fill `recvs[peer]` (byte memoryviews) concurrently; returns when all are done.

        Raises TransportError when a peer closes its connection, or when nothing moves for `timeout` seconds. While
        it waits it also watches the other peer's connection: when one party dies and a second stops because of it,
        the error names the one that closed first."""
        out = {p: mv for p, mv in sends.items() if len(mv)}
        inc = {p: (mv, 0) for p, mv in recvs.items() if len(mv)}
        poller = None
        while out or inc:
            for p in list(out):
                mv = out[p]
                try:
                    n = self.socks[p].send(mv)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise self._lost("send", p, f"connection lost ({e})") from e
                if n == len(mv):
                    del out[p]
                else:
                    out[p] = mv[n:]
            for p in list(inc):
                mv, got = inc[p]
                try:
                    n = self.socks[p].recv_into(mv[got:])
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise self._lost("recv", p, f"connection lost ({e})") from e
                if n == 0:
                    raise self._lost("recv", p, "the peer closed the connection")
                if got + n == len(mv):
                    del inc[p]
                else:
                    inc[p] = (mv, got + n)
            if not (out or inc):
                break
            if poller is None:
                poller = select.poll()
            for p, s in self.socks.items():
                ev = (select.POLLIN if p in inc else _RDHUP if p not in self._hup else 0) | \
                    (select.POLLOUT if p in out else 0)
                if ev:
                    poller.register(s, ev)
                else:
                    try:
                        poller.unregister(s)
                    except KeyError:
                        pass
            events = poller.poll(timeout * 1000)
            if not events:
                p, kind = (next(iter(inc)), "recv") if inc else (next(iter(out)), "send")
                raise self._lost(kind, p, f"no progress within {timeout:g}s", timed_out=True)
            for fd, ev in events:
                p = self._peer_of_fd[fd]
                if p not in inc and ev & (_RDHUP | select.POLLHUP | select.POLLERR):
                    self._hup.setdefault(p, time.monotonic())  # noted, not an error: it may have finished

    def _lost(self, kind: str, peer: int, reason: str, timed_out: bool = False) -> TransportError:
        """The error for `peer`, or for the other peer when that one had closed its connection before."""
        first = min(((t, q) for q, t in self._hup.items() if q != peer), default=None)
        if first is None:
            return TransportError(kind, peer, reason, timed_out)
        q = first[1]
        return TransportError("connection", q, f"party {q} closed its connection first; then {kind} with party "
                                               f"{peer}: {reason}")

    def close(self):
        for s in self.socks.values():
            try:
                s.close()
            except OSError:
                pass
        self.socks = {}


def accept_peers(srv: socket.socket, rank: int, token: bytes, deadline: float, timeout: float) -> dict:
    """Accept the connections of the parties ranked above `rank` on listening socket `srv`: {rank: socket}.

    A connection must open with its party's rank and `token`; anything else is closed and the wait goes on."""
    socks = {}
    while len(socks) < 2 - rank:
        srv.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            c, _ = srv.accept()
        except socket.timeout:
            raise TransportError("connect", -1, f"party {rank}: peers did not connect within {timeout:g}s",
                                 timed_out=True) from None
        c.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            hello = _recv_exact(c, 1 + TOKEN_BYTES)
        except OSError:
            hello = b""
        p = hello[0] if len(hello) == 1 + TOKEN_BYTES else -1
        if rank < p < 3 and p not in socks and hmac.compare_digest(hello[1:], token):
            socks[p] = c
        else:
            c.close()  # not one of our peers: ignore it
    return socks


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


class DistTransport:
    """isend/irecv on a torch.distributed group (gloo or NCCL); tensors stay on their transport device."""

    def __init__(self, group=None):
        self.group = group

    def exchange_tensors(self, sends: dict, recvs: dict, timeout: float) -> None:
        works = [("send", p, dist.isend(t, dst=p, group=self.group)) for p, t in sends.items()]
        works += [("recv", p, dist.irecv(t, src=p, group=self.group)) for p, t in recvs.items()]
        tmo = datetime.timedelta(seconds=timeout)
        for kind, peer, w in works:
            try:
                ok = w.wait(tmo)
            except Exception as e:  # gloo raises on timeout or on a closed connection
                raise TransportError(kind, peer, str(e)) from e
            if ok is False:
                raise TransportError(kind, peer, f"did not answer within {timeout:g}s", timed_out=True)
