"""A real DNS name server on 127.0.0.1 (UDP), answering from a table the test fills."""

from __future__ import annotations

import ipaddress
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

SILENT = "silent"  # a name the server never answers for, as a name server that has gone away


@dataclass
class NameServer:
    address: str  # "127.0.0.1:port", as the resolver takes it
    # A name (no trailing dot) to its addresses, or SILENT; any other name does not exist.
    table: dict[str, list[str] | str] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)


def _answer(query: dns.message.Message, table: dict[str, list[str] | str]) -> bytes | None:
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    entry = table.get(name)
    if entry == SILENT:
        return None
    response = dns.message.make_response(query)
    if entry is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    version = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
    matching = [a for a in entry if ipaddress.ip_address(a).version == version]
    if matching:
        response.answer.append(
            dns.rrset.from_text_list(question.name, 60, "IN", question.rdtype, matching)
        )
    return response.to_wire()


@contextmanager
def running_name_server() -> Iterator[NameServer]:
    record = NameServer(address="")

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            query = dns.message.from_wire(data)
            record.asked.append(query.question[0].name.to_text(omit_final_dot=True))
            answer = _answer(query, record.table)
            if answer is not None:
                sock.sendto(answer, self.client_address)

    with socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler) as server:
        record.address = f"127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield record
        finally:
            server.shutdown()
            thread.join()
