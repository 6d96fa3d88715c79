"""Finding exact and near-duplicate images in a dataset (``wbc audit``).

* **Exact duplicates** have the same bytes (SHA-256 of the file).
* **Near-duplicates** look the same after resizing, JPEG re-compression, flips or
  90-degree rotations. Each image gets a 256-bit pHash (:func:`imagehash.phash`,
  ``hash_size=16``) under each of the 8 dihedral transforms; the distance of two images
  is the smallest Hamming distance between one's upright hash and any of the other's 8
  (:func:`hash_distance`). Pairs within :data:`NEAR_THRESHOLD` bits are near-duplicates.
  The threshold and hash size were measured on PBC and dataset2-master, see
  ``docs/decisions/0003-duplicate-detection.md``.

The search is not all-pairs: multi-index hashing splits the 256 bits (in a fixed random
order) into ``threshold + 1`` bands; two hashes within ``threshold`` bits agree exactly on
at least one band, so only images sharing a band value are compared (numpy, vectorised).

Not detected: crops, shifts and small-angle rotations (e.g. the Keras augmentations of
dataset2-master); a 2 % crop already moves the hash by ~30-50 bits. Use a group file for those.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from .data import ImageRecord, load_image
from .errors import BadImageError, WbcError
from .io import write_csv, write_json
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

#: pHash side: the hash has ``HASH_SIZE**2`` = 256 bits (64 bits merges distinct augmented crops at distance 0).
HASH_SIZE = 16
#: Largest Hamming distance (of 256 bits) at which two images are near-duplicates.
NEAR_THRESHOLD = 20

#: The 8 symmetries of the square, identity first; the order of :func:`perceptual_hashes`.
DIHEDRAL: tuple[Image.Transpose | None, ...] = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)

PAIR_FIELDS = ["kind", "distance", "path_a", "label_a", "split_a", "path_b", "label_b", "split_b"]
_CHUNK = 1_000_000  # candidate comparisons per numpy batch (bounds memory)


@dataclass(frozen=True)
class DuplicatePair:
    """Two images that are duplicates: ``kind`` is ``"exact"`` (same bytes) or ``"near"`` (similar pHash).

    ``distance`` is the pHash Hamming distance (0 for exact pairs). ``path_a`` sorts before ``path_b``.
    """

    kind: str
    distance: int
    path_a: Path
    label_a: str | None
    split_a: str | None
    path_b: Path
    label_b: str | None
    split_b: str | None

    @property
    def cross_split(self) -> bool:
        """Both splits are known and differ (a train/test leak)."""
        return self.split_a is not None and self.split_b is not None and self.split_a != self.split_b

    @property
    def cross_label(self) -> bool:
        """Both labels are known and differ (a label conflict)."""
        return self.label_a is not None and self.label_b is not None and self.label_a != self.label_b

    def as_row(self) -> dict[str, object]:
        return {"kind": self.kind, "distance": self.distance,
                "path_a": str(self.path_a), "label_a": self.label_a, "split_a": self.split_a,
                "path_b": str(self.path_b), "label_b": self.label_b, "split_b": self.split_b}


@dataclass(frozen=True)
class Unreadable:
    path: Path
    reason: str


@dataclass
class AuditReport:
    """Result of :func:`audit`.

    ``exact_groups`` are sets of byte-identical files; ``near_groups`` are connected components
    of *all* duplicate pairs (exact or near), i.e. what must stay on one side of a split.
    ``near_pairs`` excludes byte-identical pairs, so the two pair lists are disjoint.
    Groups are sorted lists of paths, only groups of two or more images are listed.
    """

    n_images: int
    exact_pairs: list[DuplicatePair]
    near_pairs: list[DuplicatePair]
    exact_groups: list[list[Path]]
    near_groups: list[list[Path]]
    unreadable: list[Unreadable] = field(default_factory=list)
    near_threshold: int = NEAR_THRESHOLD
    hash_size: int = HASH_SIZE

    @property
    def pairs(self) -> list[DuplicatePair]:
        return self.exact_pairs + self.near_pairs

    @property
    def n_exact_pairs(self) -> int:
        return len(self.exact_pairs)

    @property
    def n_exact_groups(self) -> int:
        return len(self.exact_groups)

    @property
    def n_near_pairs(self) -> int:
        return len(self.near_pairs)

    @property
    def n_near_groups(self) -> int:
        return len(self.near_groups)

    @property
    def n_cross_split_pairs(self) -> int:
        return sum(p.cross_split for p in self.pairs)

    @property
    def n_cross_label_pairs(self) -> int:
        return sum(p.cross_label for p in self.pairs)

    def counts(self) -> dict[str, int]:
        return {
            "n_images": self.n_images,
            "n_unreadable": len(self.unreadable),
            "n_exact_pairs": self.n_exact_pairs,
            "n_exact_groups": self.n_exact_groups,
            "n_near_pairs": self.n_near_pairs,
            "n_near_groups": self.n_near_groups,
            "n_images_in_near_groups": sum(len(g) for g in self.near_groups),
            "n_cross_split_pairs": self.n_cross_split_pairs,
            "n_cross_label_pairs": self.n_cross_label_pairs,
        }


def content_hash(path: str | Path) -> str:
    """SHA-256 hex digest of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def perceptual_hashes(img: Image.Image, hash_size: int = HASH_SIZE) -> tuple[int, ...]:
    """pHash of ``img`` under the 8 :data:`DIHEDRAL` transforms (identity first), as ``hash_size**2``-bit ints.

    The image is converted to grey and downscaled once (exactly as :func:`imagehash.phash` does),
    then transformed, so the identity entry equals ``imagehash.phash(img, hash_size)``.
    ``min()`` of the tuple is a flip/rotation-invariant canonical hash, but for matching prefer
    :func:`hash_distance`, which does not depend on which transform happens to be the minimum.
    """
    side = hash_size * 4  # imagehash's default highfreq_factor
    small = img.convert("L").resize((side, side), Image.Resampling.LANCZOS)
    out = []
    for t in DIHEDRAL:
        bits = imagehash.phash(small if t is None else small.transpose(t), hash_size=hash_size).hash.ravel()
        out.append(int.from_bytes(np.packbits(bits).tobytes(), "big"))
    return tuple(out)


def hash_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Flip/rotation-tolerant distance of two :func:`perceptual_hashes` tuples (symmetric)."""
    return min(min((a[0] ^ y).bit_count() for y in b), min((b[0] ^ x).bit_count() for x in a))


def _words(hashes: Sequence[Sequence[int]], nbits: int) -> np.ndarray:
    """(n, 8, ceil(nbits/64)) uint64 array of the hashes (zero-padded on the left)."""
    nbytes = -(-nbits // 64) * 8
    raw = b"".join(h.to_bytes(nbytes, "big") for hs in hashes for h in hs)
    arr = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    return arr.reshape(len(hashes), len(DIHEDRAL), nbytes // 8)


def _band_keys(words: np.ndarray, n_bands: int, seed: int = 0) -> np.ndarray:
    """(n, 8, n_bands) int64 band values; bands take the bits in a fixed random order (decorrelates them)."""
    bits = np.unpackbits(words.astype(">u8").view(np.uint8), axis=-1)  # (n, 8, nbits)
    order = np.random.default_rng(seed).permutation(bits.shape[-1])
    keys = []
    for band in np.array_split(order, n_bands):
        weights = np.left_shift(np.int64(1), np.arange(len(band), dtype=np.int64))
        keys.append((bits[..., band].astype(np.int64) * weights).sum(-1))
    return np.stack(keys, axis=-1)


def near_pairs(hashes: Sequence[Sequence[int]], threshold: int = NEAR_THRESHOLD,
               hash_size: int = HASH_SIZE) -> list[tuple[int, int, int]]:
    """All ``(i, j, distance)`` with ``i < j`` and ``hash_distance(hashes[i], hashes[j]) <= threshold``.

    Multi-index hashing: exact on band values, then vectorised popcount on the candidates only.
    Cost grows with the number of images sharing a band value, not with ``n**2``.
    """
    n, nbits = len(hashes), hash_size * hash_size
    if n < 2:
        return []
    if not 0 <= threshold < nbits:
        raise ValueError(f"threshold must be in [0, {nbits}), got {threshold}")
    words = _words(hashes, nbits)
    n_t = words.shape[1]
    n_bands = max(threshold + 1, -(-nbits // 62))  # >= threshold+1 (pigeonhole), <= 62 bits per int64 key
    keys = _band_keys(words, n_bands)
    upright = words[:, 0, :]
    found: list[np.ndarray] = []
    for k in range(n_bands):
        entry_keys = keys[:, :, k].ravel()  # entry e = image * 8 + transform
        order = np.argsort(entry_keys, kind="stable")
        sorted_keys = entry_keys[order]
        lo = np.searchsorted(sorted_keys, keys[:, 0, k], "left")
        counts = np.searchsorted(sorted_keys, keys[:, 0, k], "right") - lo
        ends = np.cumsum(counts)
        start = 0
        while start < n:  # batches of queries with at most ~_CHUNK candidates
            stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + _CHUNK, "right")))
            q = np.arange(start, min(stop, n))
            c = counts[q]
            total = int(c.sum())
            if total:
                qi = np.repeat(q, c)
                offsets = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
                entry = order[np.repeat(lo[q], c) + offsets]
                j, t = entry // n_t, entry % n_t
                keep = j != qi
                qi, j, t = qi[keep], j[keep], t[keep]
                d = np.bitwise_count(upright[qi] ^ words[j, t]).sum(-1)
                close = d <= threshold
                if close.any():
                    a, b = qi[close], j[close]
                    found.append(np.minimum(a, b) * n + np.maximum(a, b))
            start = stop
    if not found:
        return []
    codes = np.unique(np.concatenate(found))
    ii, jj = codes // n, codes % n
    d_ij = np.bitwise_count(upright[ii][:, None, :] ^ words[jj]).sum(-1).min(-1)
    d_ji = np.bitwise_count(upright[jj][:, None, :] ^ words[ii]).sum(-1).min(-1)
    dist = np.minimum(d_ij, d_ji)
    return [(int(i), int(j), int(d)) for i, j, d in zip(ii, jj, dist) if d <= threshold]


def _components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (union-find) with two or more members, each sorted."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return [m for m in members.values() if len(m) > 1]


def _unique_records(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Drop repeats of the same path (e.g. overlapping arguments); symlinked copies are kept."""
    seen: set[str] = set()
    out, repeats = [], 0
    for r in records:
        key = os.path.abspath(r.path)
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        out.append(r)
    if repeats:
        log.info("ignored %d repeated path(s)", repeats)
    return out


def _pair(kind: str, distance: int, a: ImageRecord, b: ImageRecord) -> DuplicatePair:
    if str(b.path) < str(a.path):
        a, b = b, a
    return DuplicatePair(kind, distance, a.path, a.label, a.split, b.path, b.label, b.split)


def audit(records: list[ImageRecord], near_threshold: int = NEAR_THRESHOLD, progress: bool = True,
          hash_size: int = HASH_SIZE) -> AuditReport:
    """Hash every image once and report exact and near-duplicate pairs and groups.

    Unreadable files are listed in :attr:`AuditReport.unreadable` (with the reason) and skipped.
    A threshold outside ``[0, hash_size**2)`` raises :class:`WbcError`.
    ``progress`` shows a tqdm bar (on stderr) while hashing.
    """
    if not 0 <= near_threshold < hash_size * hash_size:
        raise WbcError(f"near-duplicate threshold must be between 0 and {hash_size * hash_size - 1} bits "
                       f"(default {NEAR_THRESHOLD}), got {near_threshold}")
    records = _unique_records(records)
    good: list[ImageRecord] = []
    sha: list[str] = []
    phashes: list[tuple[int, ...]] = []
    unreadable: list[Unreadable] = []
    for r in progress_bar(records, desc="hashing", unit="img", enabled=progress):
        try:
            img = load_image(r.path)
            digest = content_hash(r.path)
        except BadImageError as exc:
            unreadable.append(Unreadable(r.path, exc.reason))
            continue
        except OSError as exc:  # e.g. permission denied, or the file vanished meanwhile
            unreadable.append(Unreadable(r.path, exc.strerror or exc.__class__.__name__))
            continue
        good.append(r)
        sha.append(digest)
        phashes.append(perceptual_hashes(img, hash_size))

    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(sha):
        by_sha[digest].append(i)
    exact_idx = [(m[x], m[y]) for m in by_sha.values() if len(m) > 1
                 for x in range(len(m)) for y in range(x + 1, len(m))]
    near_idx = [(i, j, d) for i, j, d in near_pairs(phashes, near_threshold, hash_size) if sha[i] != sha[j]]

    def paths(groups: list[list[int]]) -> list[list[Path]]:
        return sorted((sorted((good[i].path for i in g), key=str) for g in groups), key=lambda g: str(g[0]))

    def order(p: DuplicatePair) -> tuple[int, str, str]:
        return p.distance, str(p.path_a), str(p.path_b)

    exact = sorted((_pair("exact", 0, good[i], good[j]) for i, j in exact_idx), key=order)
    near = sorted((_pair("near", d, good[i], good[j]) for i, j, d in near_idx), key=order)
    return AuditReport(
        n_images=len(records),
        exact_pairs=exact,
        near_pairs=near,
        exact_groups=paths(_components(len(good), exact_idx)),
        near_groups=paths(_components(len(good), exact_idx + [(i, j) for i, j, _ in near_idx])),
        unreadable=unreadable,
        near_threshold=near_threshold,
        hash_size=hash_size,
    )


def duplicate_groups(records: list[ImageRecord], near_threshold: int = NEAR_THRESHOLD, progress: bool = False,
                     report: AuditReport | None = None) -> dict[Path, str]:
    """A group id per image for leakage-safe splitting: (near-)duplicates share one, others get their own.

    The id is the path (as a string) of the group's first member in sorted order, so an image
    without duplicates has its own path as group id (like :func:`wbc.splits.group_of`).
    Pass ``report`` to reuse an :func:`audit` result instead of hashing again.
    """
    if report is None:
        report = audit(records, near_threshold=near_threshold, progress=progress)
    groups = {r.path: str(r.path) for r in records}
    for members in report.near_groups:
        gid = str(members[0])
        for p in members:
            groups[p] = gid
    return groups


def format_report(report: AuditReport, max_pairs: int = 10) -> str:
    """Summary counts and the first ``max_pairs`` pairs, for the terminal."""
    c = report.counts()
    lines = [
        f"Audited {c['n_images']} images ({c['n_unreadable']} unreadable); near-duplicate threshold "
        f"{report.near_threshold}/{report.hash_size ** 2} bits (pHash, flips/rotations included)",
        f"  exact duplicates (same bytes): {c['n_exact_pairs']} pairs in {c['n_exact_groups']} groups",
        f"  near-duplicates (bytes differ): {c['n_near_pairs']} pairs",
        f"  duplicate groups (exact or near): {c['n_near_groups']} groups, {c['n_images_in_near_groups']} images",
        f"  pairs across splits (leakage): {c['n_cross_split_pairs']}",
        f"  pairs with different labels (label conflicts): {c['n_cross_label_pairs']}",
    ]
    pairs = report.pairs
    if pairs:
        shown = sorted(pairs, key=lambda p: (not p.cross_label, not p.cross_split))[:max_pairs]
        lines.append(f"First {len(shown)} of {len(pairs)} pairs (label conflicts and cross-split first):")
        for p in shown:
            flags = "".join([" LABEL-CONFLICT" if p.cross_label else "", " CROSS-SPLIT" if p.cross_split else ""])
            lines.append(f"  {p.kind} d={p.distance}: {p.path_a} [{p.label_a or '-'}/{p.split_a or '-'}]"
                         f" = {p.path_b} [{p.label_b or '-'}/{p.split_b or '-'}]{flags}")
    for u in report.unreadable[:max_pairs]:
        lines.append(f"  unreadable: {u.path}: {u.reason}")
    if len(report.unreadable) > max_pairs:
        lines.append(f"  ... and {len(report.unreadable) - max_pairs} more unreadable files")
    return "\n".join(lines)


def write_report(report: AuditReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``pairs.csv`` and ``summary.json`` into ``out_dir`` (each atomically); return their paths."""
    out = Path(out_dir)
    pairs_csv, summary_json = out / "pairs.csv", out / "summary.json"
    write_csv(pairs_csv, (p.as_row() for p in report.pairs), PAIR_FIELDS)
    write_json(summary_json, {
        **report.counts(),
        "near_threshold": report.near_threshold,
        "hash": f"imagehash.phash(hash_size={report.hash_size}); distance = min over 8 flips/rotations",
        "exact_groups": report.exact_groups,
        "near_groups": report.near_groups,
        "unreadable": [{"path": u.path, "reason": u.reason} for u in report.unreadable],
    })
    return pairs_csv, summary_json
