"""Three parties in their own Linux network namespaces, joined by a rate-limited bridge (LAN / WAN benchmarks).

Topology (all of it created here, all of it removed on exit):

    netns <tag>p0: <tag>v0 10.77.0.1/24 --veth--+
    netns <tag>p1: <tag>v1 10.77.0.2/24 --veth--+-- bridge <tag>br in netns <tag>br
    netns <tag>p2: <tag>v2 10.77.0.3/24 --veth--+

Each party's egress is shaped with `tc qdisc ... tbf` (token bucket: LAN 10gbit, WAN 100mbit). The private subnet
exists only inside these namespaces, and the bridge lives in a namespace of its own, so the host's interfaces and
routes are never touched and no traffic can leave. This kernel has no `netem`, so latency is not emulated: callers
report measured time and beside it `measured + rounds x RTT` (see PROFILES).

Needs root and iproute2 (`ip`, `tc`). `availability()` says whether that works here and, if not, why.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

SUBNET = "10.77.0"        # 10.77.0.0/24, only inside namespaces created here
PREFIX = "slb"            # namespace / interface names: slb<pid>p<r>, slb<pid>br, slb<pid>v<r>, slb<pid>b<r>


@dataclass(frozen=True)
class NetProfile:
    name: str
    rate: str        # tc rate, e.g. "10gbit"
    rate_bps: float  # the same in bits per second
    rtt_s: float     # round-trip time charged per communication round in the modeled time
    burst: str       # tbf bucket size: must hold at least one GSO super-packet (64 KiB), else packets are dropped


PROFILES = {
    "lan": NetProfile("lan", "10gbit", 10e9, 0.2e-3, "4mb"),
    "wan": NetProfile("wan", "100mbit", 100e6, 40e-3, "512kb"),
}


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


class NetnsError(RuntimeError):
    """Namespaces could not be set up (not root, no iproute2, no permission, missing qdisc)."""


def availability() -> tuple[bool, str]:
    """(True, "ok") if namespaces, veth, bridges and tbf work here; else (False, the reason in words).

    Creates and removes a probe namespace (well under a second)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "network namespaces need root (this process is not root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    try:
        _run(["ip", "netns", "add", probe])
        _run(["ip", "-n", probe, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"])
        _run(["ip", "-n", probe, "link", "add", "pbr", "type", "bridge"])
        _run(["ip", "-n", probe, "link", "set", "pv0", "up"])
        _run(["tc", "-n", probe, "qdisc", "add", "dev", "pv0", "root", "tbf", "rate", "1gbit",
              "burst", "256kb", "latency", "100ms"])
    except (NetnsError, OSError, subprocess.SubprocessError) as e:
        return False, f"cannot create namespaces/veth/bridge/tbf here: {e}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return True, "ok"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete namespaces left by earlier runs of this module whose process is gone. Returns the names deleted."""
    if shutil.which("ip") is None:
        return []
    out = _run(["ip", "netns", "list"], check=False).stdout
    gone = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)(p\d|br|probe)", name)
        if m and not _pid_alive(int(m.group(1))):
            _run(["ip", "netns", "del", name], check=False)
            gone.append(name)
    return gone


class PartyNetwork:
    """Context manager: three party namespaces on a shaped bridge. `ns(r)`, `addr(r)`, `ifname(r)`, `exec_prefix(r)`.

    Clean-up runs on `__exit__`, at interpreter exit and on SIGTERM/SIGHUP, and is idempotent.
    """

    def __init__(self, profile: NetProfile | str):
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.tag = f"{PREFIX}{os.getpid()}"
        self.created: list[str] = []
        self._old_handlers = {}

    def ns(self, r: int) -> str:
        return f"{self.tag}p{r}"

    def ifname(self, r: int) -> str:
        return f"{self.tag}v{r}"

    def addr(self, r: int) -> str:
        return f"{SUBNET}.{r + 1}"

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}br"

    def exec_prefix(self, r: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(r)]

    def env(self, r: int) -> dict:
        """Environment for party r (add MASTER_PORT): the rendezvous is party 0's address; gloo uses the veth."""
        return {"RANK": str(r), "WORLD_SIZE": "3", "MASTER_ADDR": self.addr(0), "GLOO_SOCKET_IFNAME": self.ifname(r),
                "TP_SOCKET_IFNAME": self.ifname(r)}

    def __enter__(self):
        ok, why = availability()
        if not ok:
            raise NetnsError(why)
        cleanup_stale()
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _on_signal(self, signum, frame):
        self.close()
        raise SystemExit(128 + signum)

    def _create(self):
        p = self.profile
        br, brns = f"{self.tag}br", self.bridge_ns
        _run(["ip", "netns", "add", brns])
        self.created.append(brns)
        _run(["ip", "-n", brns, "link", "add", br, "type", "bridge"])
        _run(["ip", "-n", brns, "link", "set", br, "up"])
        for r in range(3):
            ns, v, b = self.ns(r), self.ifname(r), f"{self.tag}b{r}"
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
            # create the pair inside the party namespace, then move the bridge end: nothing appears in the host netns
            _run(["ip", "-n", ns, "link", "add", v, "type", "veth", "peer", "name", b])
            _run(["ip", "-n", ns, "link", "set", b, "netns", brns])
            _run(["ip", "-n", brns, "link", "set", b, "master", br])
            _run(["ip", "-n", brns, "link", "set", b, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.addr(r)}/24", "dev", v])
            _run(["ip", "-n", ns, "link", "set", v, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["tc", "-n", ns, "qdisc", "add", "dev", v, "root", "tbf", "rate", p.rate, "burst", p.burst,
                  "latency", "200ms"])

    def describe(self) -> str:
        p = self.profile
        return (f"3 network namespaces on a bridge, subnet {SUBNET}.0/24, egress tbf rate {p.rate} burst {p.burst} "
                f"per party; RTT {p.rtt_s * 1e3:g} ms charged per round in the modeled time (no netem in this kernel)")

    def qdisc_stats(self) -> dict:
        """tc -s qdisc output per party (sent bytes, drops, overlimits) as text."""
        return {r: _run(["tc", "-s", "-n", self.ns(r), "qdisc", "show", "dev", self.ifname(r)], check=False).stdout
                for r in range(3)}

    def close(self):
        while self.created:
            _run(["ip", "netns", "del", self.created.pop()], check=False)
        for sig, h in self._old_handlers.items():
            try:
                signal.signal(sig, h)
            except (ValueError, TypeError):
                pass
        self._old_handlers = {}

    def __exit__(self, *exc):
        self.close()
