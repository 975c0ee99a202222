"""Token tries of continuations, common prompt prefixes, and the work any exact scorer must do.

Pure numpy and Python, no model: the structure the tree scorer lays out and the lower
bound its work is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trie:
    """A token trie over continuations. Nodes [0, n_internal) are internal (fed to the
    model), the rest are leaves (only predicted)."""

    token: np.ndarray       # (M,) token id of each node
    parent: np.ndarray      # (M,) parent node, -1 for children of the root (the prompt's last token)
    depth: np.ndarray       # (M,) 0 for the first continuation token
    n_internal: int
    ends: np.ndarray        # (C,) the node of each continuation's last token (its path runs up to the root)

    @property
    def n_nodes(self) -> int:
        return len(self.token)


def build_trie(conts: list[list[int]]) -> Trie:
    """The trie of `conts` (each a non-empty token list). Not a hot path: O(total tokens)
    time, O(nodes) memory (a continuation's path is found from its end by parent pointers)."""
    children: list[dict[int, int]] = [{}]            # node 0 is the root (not a token)
    token, parent, depth = [-1], [-1], [-1]
    ends = []
    for c in conts:
        node = 0
        for t in c:
            nxt = children[node].get(t)
            if nxt is None:
                nxt = len(token)
                children[node][t] = nxt
                children.append({})
                token.append(t)
                parent.append(node)
                depth.append(depth[node] + 1)
            node = nxt
        ends.append(node)
    M = len(token) - 1
    internal = np.array([len(children[i]) > 0 for i in range(1, M + 1)])
    # renumber: internal nodes first (in creation order, so parents precede children), then leaves
    order = np.concatenate([np.flatnonzero(internal), np.flatnonzero(~internal)]) + 1   # old ids
    new_of_old = np.full(M + 1, -1)
    new_of_old[order] = np.arange(M)
    tok = np.asarray(token)[order]
    par = new_of_old[np.asarray(parent)[order]]      # root (old 0) -> -1
    dep = np.asarray(depth)[order]
    return Trie(token=tok, parent=par, depth=dep, n_internal=int(internal.sum()),
                ends=new_of_old[np.asarray(ends, dtype=np.int64)])


def path_nodes(trie: Trie, j: int) -> list[int]:
    """The nodes of continuation j's path, from its last token up to the root's child."""
    out, n = [], int(trie.ends[j])
    while n >= 0:
        out.append(n)
        n = int(trie.parent[n])
    return out


def common_prefix_length(seqs: list[list[int]], *, keep_last: bool = True) -> int:
    """Length of the longest common prefix; with keep_last, every sequence keeps at least
    its last token outside it (its logits are needed)."""
    n = min(len(s) for s in seqs) - (1 if keep_last else 0)
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def trie_lower_bound(prompts: list[list[int]], conts: list[list[int]]) -> int:
    """Token positions any exact scorer must run: the internal (non-leaf) nodes of the
    trie of all prompt+continuation sequences (a node's logits predict its children;
    leaves need none). = distinct prompt prefixes + N x internal continuation nodes."""
    ordered = sorted(map(tuple, prompts))             # in lexicographic order, each prompt adds
    prompt_nodes = len(ordered[0])                    # its tokens beyond the common prefix with
    for prev, cur in zip(ordered, ordered[1:]):       # the one before it
        prompt_nodes += len(cur) - common_prefix_length([list(prev), list(cur)], keep_last=False)
    return prompt_nodes + len(prompts) * build_trie(conts).n_internal


def target_chunks(conts: list[list[int]], *, max_internal: int) -> list[np.ndarray]:
    """Split continuation indices into groups whose tries have at most `max_internal`
    internal nodes (= distinct proper prefixes); usually one group. Targets are taken in
    the order of their token ids, so a group is a run of neighbouring subtrees and shares
    its prefixes (each index array is in that order; a single group keeps the given order)."""
    chunks, cur, prefixes = [], [], set()
    for j in sorted(range(len(conts)), key=lambda j: conts[j]):
        c = conts[j]
        new = {tuple(c[:k]) for k in range(1, len(c))} - prefixes
        if cur and len(prefixes) + len(new) > max_internal:
            chunks.append(np.array(cur))
            cur, prefixes = [], set()
            new = {tuple(c[:k]) for k in range(1, len(c))}
        cur.append(j)
        prefixes |= new
    if not chunks:                                    # one group: the targets in their own order
        return [np.arange(len(conts))]
    chunks.append(np.array(cur))
    return chunks
