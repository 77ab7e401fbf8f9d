"""Secret masking of a try's output as a byte stream (used by the log pump).

The output may hold binary data and invalid UTF-8, so :class:`StreamMasker` works on
bytes: each registered secret becomes byte patterns (its UTF-8 form in every encoding
of :func:`ketch.worker.secrets_mask.encodings`), and every occurrence is replaced by
``***``. Output arrives in arbitrary pieces, so a secret may be split across two
:meth:`StreamMasker.feed` calls: the masker holds back the shortest tail that could
still become (part of) a secret, and writes it with the next piece or at
:meth:`StreamMasker.flush`. The concatenated output is exactly the whole stream masked
in one go as a regex alternation would: leftmost match, longest pattern first.

Cost per piece: each pattern is searched with ``bytes.find`` (a fast C search; a long
piece is first checked for any pattern with ``in``), and searched again only after a
match passed its next occurrence, so masking costs a few passes of ``find`` over the
output plus a little Python per match. The held tail is looked for only when the piece's last byte occurs
inside a pattern, and then only in its last ``longest pattern - 1`` bytes. With no
secret registered a piece is returned as is, without a copy. Stdlib only: the try
imports it.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Iterator

from ketch.worker.secrets_mask import encodings

REPLACEMENT = b"***"

# The held-tail search first matches candidates on this many leading bytes of the
# patterns (one small trie regex), then checks each candidate exactly.
_PREFIX_BYTES = 12

# A piece longer than this is first checked for any pattern with ``in`` (one pass per
# needle), so a piece without a secret costs no per-pattern search.
_DIRECT_SCAN_BYTES = 1024

_Trie = dict[int, "_Trie"]


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate outside the escape range
        return text.encode("utf-8", "surrogatepass")


def patterns(secret: str) -> set[bytes]:
    """The byte patterns of ``secret`` (empty when it is too short to mask)."""
    return {_to_bytes(form) for form in encodings(secret)}


def _trie_regex(node: _Trie) -> bytes:
    """A regex matching, from a start position, a path of the trie that reaches either
    a leaf or the end of the subject (``\\Z``) after at least one byte."""
    branches = []
    for byte, child in sorted(node.items()):
        literal = re.escape(bytes([byte]))
        if child:
            literal += b"(?:" + _trie_regex(child) + b"|\\Z)"
        branches.append(literal)
    return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"


class _Compiled:
    """Everything :meth:`StreamMasker.feed` needs, built at once by ``add`` and swapped
    in with one assignment (so a feed never sees half of an update)."""

    __slots__ = ("candidates", "inner", "longest_first", "needles", "ordered", "window")

    def __init__(self, patterns: set[bytes]) -> None:
        longest_first = sorted(patterns, key=lambda p: (-len(p), p))
        self.longest_first = longest_first
        self.ordered = sorted(patterns)  # lexicographic, for the exact prefix check
        self.window = len(longest_first[0]) - 1  # the longest tail ever held
        trie: _Trie = {}
        for pattern in patterns:
            node = trie
            for byte in pattern[:_PREFIX_BYTES]:
                node = node.setdefault(byte, {})
        self.candidates = re.compile(_trie_regex(trie))
        # A tail can only be held when its last byte is a non-final byte of a pattern.
        self.inner = frozenset(byte for pattern in patterns for byte in pattern[:-1])
        # Every pattern contains one of these (a pattern containing another is left
        # out): a piece holding none of them holds no pattern.
        self.needles: list[bytes] = []
        for pattern in sorted(patterns, key=len):
            if not any(needle in pattern for needle in self.needles):
                self.needles.append(pattern)

    def matches(self, buf: bytes, stop: int) -> Iterator[tuple[int, int]]:
        """The spans a regex alternation of the patterns (longest first) would match in
        ``buf``, leftmost first, without overlaps, for those starting before ``stop``.

        Found with ``bytes.find`` per pattern rather than one regex: ``find`` is a fast
        C search, many times quicker per byte than ``re``'s alternation on log text, and
        a pattern is searched again only when a match passed its next occurrence."""
        if len(buf) > _DIRECT_SCAN_BYTES and not any(n in buf for n in self.needles):
            return
        found = [(buf.find(p), p) for p in self.longest_first]
        nexts = [(at, p) for at, p in found if 0 <= at < stop]
        while nexts:
            # leftmost, then longest (stable: ``longest_first`` order on ties)
            at, pattern = min(nexts, key=lambda item: (item[0], -len(item[1])))
            end = at + len(pattern)
            yield at, end
            refreshed = []
            for next_at, p in nexts:
                if next_at < end:
                    next_at = buf.find(p, end)
                if 0 <= next_at < stop:
                    refreshed.append((next_at, p))
            nexts = refreshed

    def hold_start(self, buf: bytes) -> int:
        """Where the tail to hold starts: the first position from which the rest of
        ``buf`` is a proper prefix of some pattern (``len(buf)``: none)."""
        size = len(buf)
        if not size or buf[-1] not in self.inner:
            return size
        search = self.candidates.search
        ordered = self.ordered
        start = max(0, size - self.window)
        while (found := search(buf, start)) is not None:
            at = found.start()
            tail = buf[at:]
            index = bisect_left(ordered, tail)
            # The patterns starting with ``tail`` follow ``index``; skip ``tail`` itself.
            if index < len(ordered) and ordered[index] == tail:
                index += 1
            if index < len(ordered) and ordered[index].startswith(tail):
                return at
            start = at + 1
        return size


class StreamMasker:
    """Masks registered secrets in a byte stream fed in arbitrary pieces.

    ``feed(piece)`` returns the bytes that may be written now (masked); ``flush()``
    returns the held tail at the end of the stream (masked); ``pending`` is the number
    of bytes held. One thread feeds it; ``add`` may be called from another.
    """

    def __init__(self, replacement: bytes = REPLACEMENT) -> None:
        self._replacement = replacement
        self._patterns: frozenset[bytes] = frozenset()
        self._compiled: _Compiled | None = None
        self._add_lock = threading.Lock()
        self._held = b""

    @property
    def pending(self) -> int:
        """How many bytes are held back (written by the next feed or by flush)."""
        return len(self._held)

    @property
    def patterns(self) -> frozenset[bytes]:
        return self._patterns

    def add(self, secret: str) -> None:
        """Register ``secret`` (all its encodings); a duplicate or a value too short to
        mask changes nothing."""
        with self._add_lock:
            new = patterns(secret) - self._patterns
            if not new:
                return
            self._patterns = self._patterns | new
            self._compiled = _Compiled(set(self._patterns))

    def feed(self, data: bytes) -> bytes:
        """The masked bytes of ``data`` (after the tail held from before) that may be
        written now; a tail that could still become a secret is held."""
        compiled = self._compiled
        if compiled is None:
            return data
        buf = self._held + data if self._held else data
        hold = compiled.hold_start(buf)
        # A match that starts before the held tail is final even if it runs into it;
        # the next feed's scan then starts where that match ended.
        out, pos = self._masked(compiled, buf, hold)
        cut = max(hold, pos)
        self._held = buf[cut:]
        if not out:
            return buf[:cut]
        out.append(buf[pos:cut])
        return b"".join(out)

    def flush(self) -> bytes:
        """The held tail, masked (at the end of the stream)."""
        held, self._held = self._held, b""
        if not held or self._compiled is None:
            return held
        out, pos = self._masked(self._compiled, held, len(held))
        out.append(held[pos:])
        return b"".join(out)

    def _masked(self, compiled: _Compiled, buf: bytes, stop: int) -> tuple[list[bytes], int]:
        """``buf`` up to the end of the last match starting before ``stop``, masked, as
        pieces (none when nothing matched), and where that last match ended."""
        out: list[bytes] = []
        pos = 0
        for start, end in compiled.matches(buf, stop):
            out.append(buf[pos:start])
            out.append(self._replacement)
            pos = end
        return out, pos
