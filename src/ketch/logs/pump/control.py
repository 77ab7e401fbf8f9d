"""The messages between a try and its pump, over their socket pair.

A message is a 4-byte big-endian length and its bytes. The try sends ``S`` + a secret
(answered ``K``) or ``Q`` (answered with the pump's first write problem, or nothing).
"""

from __future__ import annotations

import socket
import struct


def send_message(sock: socket.socket, message: bytes) -> None:
    sock.sendall(struct.pack("!I", len(message)) + message)


def recv_message(sock: socket.socket) -> bytes | None:
    header = recv_exact(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack("!I", header)
    return recv_exact(sock, length)


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            return None
        data += part
    return data
