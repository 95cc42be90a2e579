"""RFC 6962 Merkle tree hashing (the Certificate Transparency log tree), with inclusion proofs.

The tree hash of a list of leaves D[0:n] (RFC 6962 section 2.1, RFC 9162 section 2.1.1):

- MTH({}) = SHA-256() (the hash of the empty string);
- a leaf is hashed as SHA-256(0x00 || data), an interior node as SHA-256(0x01 || left || right);
- for n > 1 the list is split at k, the largest power of two smaller than n: MTH(D[0:k]) is the left
  child, MTH(D[k:n]) the right one.

The distinct leaf and node prefixes make a leaf impossible to pass off as an interior node (second
preimage), so a root commits to the exact list, its order and its length. Using the published scheme,
rather than an ad hoc one, lets anyone check a root with any RFC 6962 implementation.

An inclusion proof (audit path) shows that one leaf is the ``index``-th of a tree with a given root,
with about log2(n) hashes, so a single audit record can be proven without handing out the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class MerkleBuilder:
    """Computes the RFC 6962 root of leaves added one at a time, in O(log n) memory.

    Holds the roots of the perfect subtrees that make up the leaves seen so far (largest first), as a
    binary counter does; merging them right to left at the end gives exactly the split-at-the-largest-
    power-of-two tree of RFC 6962. This is what lets a manifest cover millions of audit records
    without keeping their hashes in memory.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (number of leaves below, subtree root)
        self.size = 0

    def add(self, data: bytes) -> None:
        """Append one leaf (its data, not its hash)."""
        self.add_hash(leaf_hash(data))

    def add_hash(self, hashed_leaf: bytes) -> None:
        """Append one leaf given by its leaf hash."""
        size, node = 1, hashed_leaf
        while self._stack and self._stack[-1][0] == size:
            left_size, left = self._stack.pop()
            size, node = left_size + size, node_hash(left, node)
        self._stack.append((size, node))
        self.size += 1

    def root(self) -> bytes:
        """The tree hash of every leaf added so far (SHA-256 of nothing for no leaves)."""
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """MTH over the leaves' data, in order."""
    builder = MerkleBuilder()
    for data in leaves:
        builder.add(data)
    return builder.root()


def root_of_hashes(hashed_leaves: Iterable[bytes]) -> bytes:
    """MTH over leaves given by their leaf hashes."""
    builder = MerkleBuilder()
    for hashed in hashed_leaves:
        builder.add_hash(hashed)
    return builder.root()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(hashed_leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path PATH(index, D[0:n]) of RFC 6962 section 2.1.1, over leaf hashes.

    Ordered from the leaf's sibling up to the child of the root. Raises ``IndexError`` for an index
    outside the tree.
    """
    if not 0 <= index < len(hashed_leaves):
        raise IndexError(f"leaf index {index} is outside a tree of {len(hashed_leaves)} leaves")
    lo, hi = 0, len(hashed_leaves)
    # Walk down from the root, remembering the sibling subtree at each level; the path is the
    # reverse of that walk.
    siblings: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            siblings.append(root_of_hashes(hashed_leaves[lo + k : hi]))
            hi = lo + k
        else:
            siblings.append(root_of_hashes(hashed_leaves[lo : lo + k]))
            lo = lo + k
    return siblings[::-1]


def verify_inclusion(hashed_leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True when ``proof`` shows ``hashed_leaf`` at ``index`` in the tree of ``size`` leaves with ``root``.

    The verification algorithm of RFC 9162 section 2.1.3.2; it also rejects proofs of the wrong length.
    """
    if not 0 <= index < size:
        return False
    fn, sn, node = index, size - 1, hashed_leaf
    for sibling in proof:
        if sn == 0:
            return False  # proof longer than the path
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                # The right edge of a ragged tree: climb past the levels where this node has no sibling.
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root
