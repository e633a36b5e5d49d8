"""Port handout for the services the team and Ray tiers start on loopback."""

from __future__ import annotations

from hmoe.teamstack import free_port


def test_free_ports_never_repeat_within_a_process():
    """Ray takes seven ports before it binds any of them; the kernel hands a closed port
    out again soon enough that 1000 draws without memory repeat almost surely (a repeat
    failed a CI run: `ray start` refused one port for two components).
    """
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_grpc_ports_leave_their_partner_port_unhanded():
    """SeaweedFS binds port + 10000 for gRPC: no later handout may be that port."""
    grpc = [free_port(with_grpc=True) for _ in range(50)]
    plain = [free_port() for _ in range(500)]
    taken = set(grpc) | {p + 10000 for p in grpc}
    assert not taken & set(plain)
    assert all(p + 10000 < 65536 for p in grpc)
