"""The one reader of the dataset files in the ``data/beauty/`` format (torch-free).

Both the offline model (:mod:`streamrec.model.data`) and the replay tool
(:mod:`streamrec.devtools.replay`) read these files through here, so a file is accepted or
refused the same way on both paths, and ids stay the same strings ("123" in the file is item
``"123"`` on the wire and in the model's item map):

- ``sequences.txt``: ``user item item ...`` per line, oldest first, whitespace-separated ids;
  a token may carry its event type as ``item:purchase`` (see :func:`split_token`); a bare item
  has no type of its own;
- ``item_text.tsv``: a header ``item_id<TAB>title``, then ``id<TAB>title``; items may be absent
  (the Beauty file has no line for 97 of its items) and a title may be empty.

Files are untrusted input: every line is bounded (:data:`MAX_LINE_CHARS`), must be UTF-8, and
every id must be a wire-contract id; a bad one raises :class:`~streamrec.errors.DatasetError`
(a ``ValueError``) naming the file and line.

>>> split_token("sku-1:purchase"), split_token("sku-1")
(('sku-1', 'purchase'), ('sku-1', None))
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from streamrec.errors import DatasetError
from streamrec.schemas import EVENT_TYPES

log = logging.getLogger(__name__)

#: Longest line accepted in either file (bytes). Beauty's longest is well under 2 KB.
MAX_LINE_CHARS = 1_000_000
ID_RE = re.compile(r"^[!-~]{1,128}$")  # the wire contracts' Id: printable ASCII, no space


def _lines(path: str | Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) of a UTF-8 file, each line bounded."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{what} file {str(p)!r} does not exist or is not a file")
    # Binary lines, decoded one by one: a decoding error then names its exact line.
    with p.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 2), b""), start=1):
            if len(raw.rstrip(b"\r\n")) > MAX_LINE_CHARS:
                raise DatasetError(f"{p}:{lineno}: line longer than {MAX_LINE_CHARS} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{p}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            yield lineno, line.rstrip("\r\n")


def check_id(token: str, path: str | Path, lineno: int, what: str) -> str:
    """``token`` if it is a wire-contract id, else :class:`DatasetError` naming file and line."""
    if not ID_RE.match(token):
        shown = token if len(token) <= 40 else token[:37] + "..."
        raise DatasetError(
            f"{path}:{lineno}: {what} {shown!r} is not an id "
            f"(1..128 printable ASCII characters, no spaces; got {len(token)} characters)"
        )
    return token


def split_token(token: str) -> tuple[str, str | None]:
    """``"123:purchase"`` -> ``("123", "purchase")``; a bare (or unknown-suffix) token -> ``(token, None)``.

    >>> split_token("sku-1:add_to_cart"), split_token("a:b"), split_token(":view")
    (('sku-1', 'add_to_cart'), ('a:b', None), (':view', None))
    """
    head, sep, tail = token.rpartition(":")
    if sep and head and tail in EVENT_TYPES:
        return head, tail
    return token, None


def read_sequences(path: str | Path) -> dict[str, list[str]]:
    """Read ``user item item ...`` lines into ``{user: [token, ...]}`` (file order kept).

    Tokens are returned as written (``item`` or ``item:type``, see :func:`split_token`).
    Blank lines are skipped; a line with a user but no item, a bad id, a user seen twice or a
    file without any interaction raises :class:`DatasetError` naming the file (and line).
    """
    seqs: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(path, "sequences"):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise DatasetError(f"{path}:{lineno}: expected 'user item [item ...]', got only {tokens[0][:40]!r}")
        user = check_id(tokens[0], path, lineno, "user id")
        if user in seqs:
            raise DatasetError(f"{path}:{lineno}: user {user!r} already had a line ({first_line[user]})")
        for t in tokens[1:]:
            check_id(split_token(t)[0], path, lineno, "item id")
        seqs[user] = tokens[1:]
        first_line[user] = lineno
    if not seqs:
        raise DatasetError(f"sequences file {str(path)!r} holds no interactions")
    log.info("sequences read path=%s users=%d interactions=%d", path, len(seqs), sum(len(s) for s in seqs.values()))
    return seqs


def read_item_text(path: str | Path) -> dict[str, str]:
    """Read ``item_text.tsv`` into ``{item: title}``; the header line is required.

    A line with an id and no tab, or nothing after the tab, gives an empty title. Whitespace
    runs in a title (tabs included) become one space; titles are not cut here (the catalog
    contract's limit is applied where catalog items are made).
    """
    texts: dict[str, str] = {}
    header_seen = False
    for lineno, line in _lines(path, "item text"):
        if not header_seen:
            if line.lstrip("\ufeff").split("\t")[:2] != ["item_id", "title"]:
                raise DatasetError(f"{path}:{lineno}: expected the header 'item_id<TAB>title', got {line[:60]!r}")
            header_seen = True
            continue
        if not line.strip():
            continue
        item, _, title = line.partition("\t")
        check_id(item, path, lineno, "item id")
        if item in texts:
            raise DatasetError(f"{path}:{lineno}: item {item!r} has a second title line")
        texts[item] = " ".join(title.split())
    if not header_seen:
        raise DatasetError(f"{path}: empty file, expected the header 'item_id<TAB>title'")
    log.info("item text read path=%s items=%d", path, len(texts))
    return texts
