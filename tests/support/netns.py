"""The suite in a network namespace that has only loopback (issue 35).

`ray start` opens its gRPC servers on every interface whatever `--node-ip-address`
says, and a server started by a test may do the same by mistake. In a namespace whose
only interface is `lo`, every interface is loopback: nothing a test starts can listen
beyond the machine, whatever it binds to. tests/conftest.py moves the pytest process
into a new one before xdist starts its workers (they inherit it, so servers and
clients share it); the tiers that start servers (team, Ray) check that they are in
one, and skip with the reason, or fail under HMOE_REQUIRE_ALL_TIERS=1, where it could
not be made (not root, or no unshare in the kernel).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
REASON = "HMOE_NETNS"  # where conftest leaves why the namespace could not be made
OUTER = "HMOE_NETNS_OUTER"  # the namespace the session started in (the machine's)


def enter() -> str:
    """Move this process (its calling thread, and every process it starts from now) into
    a new network namespace with `lo` up. Returns '' on success, else the reason.
    """
    os.environ[OUTER] = namespace()
    if os.geteuid() != 0:
        return "making a network namespace needs root (unshare(CLONE_NEWNET))"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    _bring_up("lo")
    return ""


def _bring_up(name: str) -> None:
    """Set IFF_UP on an interface (what `ip link set lo up` does), with no iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


def interfaces() -> list[str]:
    """This process's network interfaces, by name."""
    return sorted(name for _, name in socket.if_nameindex())


def namespace(pid: int | str = "self") -> str:
    """A process's network namespace (``net:[inode]``)."""
    return os.readlink(f"/proc/{pid}/ns/net")


def loopback_only() -> tuple[bool, str]:
    """Whether this process is in a namespace of its own whose only interface is `lo`,
    and if not, why."""
    found = interfaces()
    if namespace() == os.environ.get(OUTER):
        return False, f"still in the namespace the session started in ({os.environ.get(REASON)})"
    if found != ["lo"]:
        why = os.environ.get(REASON) or "the suite did not make a namespace"
        return False, f"interfaces {found}, not only lo ({why})"
    return True, ""


def listening(pids) -> list[tuple[str, str, int, str]]:
    """(process name, address, port, network namespace) of every TCP socket the
    processes listen on."""
    import psutil

    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="tcp")
            ns = namespace(pid)
            name = proc.name()
        except (psutil.Error, OSError):
            continue  # ended meanwhile
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found.append((name, c.laddr.ip, c.laddr.port, ns))
    return found


def descendants() -> list[int]:
    """Every live process this one started (the servers and nodes of a tier)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]
