"""RFC 6962 Merkle hashing against the published Certificate Transparency test vectors.

The leaves, roots and inclusion paths below are the reference data of certificate-transparency's
``merkle_tree_test.cc`` (also in transparency-dev/merkle ``testonly``): tree heads for sizes 0..8 over
the 8 leaves, and the audit paths (leaf index, tree size) = (0, 8), (5, 8), (2, 3), (1, 5).
"""

from __future__ import annotations

import hashlib

import pytest

from raypipe.audit.merkle import (
    EMPTY_ROOT,
    MerkleBuilder,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_of_hashes,
    verify_inclusion,
)

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAF_HASHES = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
]
ROOTS = [  # index = tree size
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, audit path)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 written out literally (recursive), to check the streaming builder against."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def test_leaf_and_node_hashes_use_the_rfc_prefixes() -> None:
    assert [leaf_hash(leaf).hex() for leaf in LEAVES] == LEAF_HASHES
    assert EMPTY_ROOT.hex() == ROOTS[0]
    left, right = bytes(32), bytes([1]) * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_match_the_published_tree_heads(size: int) -> None:
    assert merkle_root(LEAVES[:size]).hex() == ROOTS[size]
    assert root_of_hashes([leaf_hash(leaf) for leaf in LEAVES[:size]]).hex() == ROOTS[size]


def test_streaming_builder_matches_the_recursive_definition_for_ragged_trees() -> None:
    leaves = [i.to_bytes(2, "big") for i in range(70)]
    builder = MerkleBuilder()
    for n, leaf in enumerate(leaves, start=1):
        builder.add(leaf)
        assert builder.size == n
        assert builder.root() == reference_mth(leaves[:n]), n


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_published_audit_paths(index: int, size: int, path: list[str]) -> None:
    hashes = [leaf_hash(leaf) for leaf in LEAVES[:size]]
    proof = inclusion_proof(hashes, index)
    assert [p.hex() for p in proof] == path
    assert verify_inclusion(hashes[index], index, size, proof, bytes.fromhex(ROOTS[size]))


def test_every_inclusion_proof_verifies_and_any_change_is_rejected() -> None:
    for size in range(1, 34):
        hashes = [leaf_hash(i.to_bytes(2, "big")) for i in range(size)]
        root = root_of_hashes(hashes)
        for index in range(size):
            proof = inclusion_proof(hashes, index)
            assert verify_inclusion(hashes[index], index, size, proof, root), (size, index)
            other = (index + 1) % size
            if other != index:
                assert not verify_inclusion(hashes[other], index, size, proof, root)
                assert not verify_inclusion(hashes[index], other, size, proof, root)
            # (A proof alone does not fix the tree size: leaf 0 of 3 and of 4 share a path shape. The
            # size is bound by the signed manifest that states root and leaf count together.)
            assert not verify_inclusion(hashes[index], index, size, [*proof, root], root)
            if proof:
                assert not verify_inclusion(hashes[index], index, size, proof[:-1], root)
                flipped = bytes([proof[0][0] ^ 1]) + proof[0][1:]
                assert not verify_inclusion(hashes[index], index, size, [flipped, *proof[1:]], root)


def test_inclusion_proof_rejects_indexes_outside_the_tree() -> None:
    hashes = [leaf_hash(b"a"), leaf_hash(b"b")]
    with pytest.raises(IndexError):
        inclusion_proof(hashes, 2)
    assert not verify_inclusion(hashes[0], 2, 2, [], root_of_hashes(hashes))
    assert verify_inclusion(hashes[0], 0, 1, [], hashes[0])  # a one-leaf tree: the root is the leaf
