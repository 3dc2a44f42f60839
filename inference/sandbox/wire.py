"""The wire between the server and a sandbox process: framed JSON messages on a socket of their own.

A frame is MAGIC + a 16-byte nonce + a 4-byte length + JSON. Each request carries a fresh random nonce and the reader
takes only the frame that carries it, skipping any other bytes: whatever model code writes into the socket (stray
bytes, forged frames with an old or made-up nonce) is never read as a reply, and the replies never get out of step.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time

MAGIC = b"\x00SBX"
HEADER = len(MAGIC) + 16 + 4
MAX_FRAME = 64 << 20


def new_nonce() -> bytes:
    return os.urandom(16)


def send(fd: int, message: dict, nonce: bytes) -> None:
    data = json.dumps(message).encode()
    view = memoryview(MAGIC + nonce + struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


class Reader:
    """Reads the frame with a given nonce from `fd`, keeping what follows it for the next read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def _fill(self, deadline: float | None) -> None:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            raise EOFError
        self.buffer += chunk

    def read(self, nonce: bytes, deadline: float | None = None) -> dict:
        mark = MAGIC + nonce
        while True:
            at = self.buffer.find(mark)
            if at < 0:
                # Keep only a tail that could be the start of the mark: the rest is not ours.
                self.buffer = self.buffer[-(len(mark) - 1):]
                self._fill(deadline)
                continue
            self.buffer = self.buffer[at:]
            if len(self.buffer) < HEADER:
                self._fill(deadline)
                continue
            (size,) = struct.unpack(">I", self.buffer[len(mark):HEADER])
            if size > MAX_FRAME:
                self.buffer = self.buffer[len(mark):]  # not a real frame: look further
                continue
            while len(self.buffer) < HEADER + size:
                self._fill(deadline)
            payload, self.buffer = self.buffer[HEADER:HEADER + size], self.buffer[HEADER + size:]
            try:
                return json.loads(payload)
            except ValueError:
                continue  # a forged frame that guessed the nonce but not a message: look further

    def read_any(self, deadline: float | None = None) -> tuple[bytes, dict]:
        """The next frame, whatever its nonce (for the sandbox side, which only the server writes to)."""
        while True:
            at = self.buffer.find(MAGIC)
            if at < 0 or len(self.buffer) - at < HEADER:
                self._fill(deadline)
                continue
            nonce = self.buffer[at + len(MAGIC):at + len(MAGIC) + 16]
            return nonce, self.read(nonce, deadline)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
