"""Deterministic sharding: each model goes to one of N shards by a hash of its relative path.

The assignment of a model depends only on its own path, so adding files to the folder never
moves existing models to another shard, and N machines running K = 0..N-1 cover every model
exactly once.
"""
from __future__ import annotations

import hashlib
import re

from ..errors import UsageError

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """Parse `K/N` into (K, N), K in 0..N-1.

    K = N is accepted as shard 0 so that GitLab's 1-based `$CI_NODE_INDEX/$CI_NODE_TOTAL`
    (1..N) and Slurm's 0-based array index both cover every shard exactly once.
    """
    match = _SHARD_RE.match(text or "")
    if not match:
        raise UsageError(f"bad --shard {text!r}", hint="write it as K/N, e.g. --shard 0/3")
    index, total = int(match.group(1)), int(match.group(2))
    if total < 1 or index > total:
        raise UsageError(f"bad --shard {text!r}: K must be in 0..N-1 and N >= 1",
                         hint="e.g. --shard 0/3, 1/3, 2/3")
    return index % total, total


def shard_of(relative_path: str, total: int) -> int:
    """The shard (0..total-1) of a model, from a stable hash of its POSIX relative path."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % total


def in_shard(relative_path: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    index, total = shard
    return shard_of(relative_path, total) == index
