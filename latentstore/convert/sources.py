"""Listing a conversion's inputs, in a deterministic order, from any of the four SRC forms.

- an ImageNet-style tree  SRC/<class>/<image>   labels from the sorted folder names;
- a flat folder           SRC/<image>           unlabelled (-1);
- a list file             one `path [label [mask_path]]` per line (label: integer or class name);
- WebDataset tar shards   SRC/*.tar or a single .tar, members KEY.jpg|png|... with optional KEY.cls;
- a VOC split             ROOT/ImageSets/Segmentation/<split>.txt of a PASCAL VOC-layout ROOT (what
                          `convert VOCROOT DST --split S` passes): images with their masks, the label names
                          being the mask classes (VOC's 21, or the scenes generator's from scenes.json).
A VOC root itself is refused with a hint to pick a split (as a class tree it would be nonsense).
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass

from ..data.imageio import IMAGE_EXTENSIONS, MAX_FILE_BYTES, check_regular_file, read_bounded
from ..data.voc import SPLIT_DIR, is_voc_root, list_voc, resolve_voc_root, voc_class_names
from ..errors import BadImageError, UsageError
from ..listfile import read_list_file
from ..store.remote.location import is_remote

MAX_LABEL_MEMBER = 1024  # a .cls member is a class name, not a payload


@dataclass(frozen=True)
class InputItem:
    ref: str  # a file path, or "TAR::MEMBER" for a member of a tar shard
    label: int  # -1 when unlabelled
    mask: str | None = None  # optional mask image path (list files, VOC splits)
    tar_offset: int = -1  # where a tar member's data starts
    tar_size: int = -1
    mask_classes: int = 0  # labels a mask may hold besides 255 (0: not known, as for list files)

    def read(self, limit: int = MAX_FILE_BYTES) -> bytes:
        """The encoded bytes, bounded: a special file, an oversized file or member is a BadImageError."""
        if self.tar_offset < 0:
            return read_bounded(self.ref, limit)
        if self.tar_size > limit:
            raise BadImageError(f"{self.ref}: tar member of {self.tar_size:,} bytes is over the {limit:,}-byte file limit")
        tar = self.ref.split("::", 1)[0]
        if is_remote(tar):  # a tar shard in object storage: fetched whole once, members sliced from it
            parent, name = tar.rsplit("/", 1)
            data = source_cache(parent).read_range(name, self.tar_offset, self.tar_size)
            if len(data) != self.tar_size:
                raise BadImageError(f"{self.ref}: tar member is truncated ({len(data)} of {self.tar_size} bytes)")
            return data
        try:
            fd = os.open(tar, os.O_RDONLY)
            try:
                data = os.pread(fd, self.tar_size, self.tar_offset)
            finally:
                os.close(fd)
        except OSError as e:
            raise BadImageError(f"{self.ref}: cannot read ({e.strerror or e})") from None
        if len(data) != self.tar_size:
            raise BadImageError(f"{self.ref}: tar member is truncated ({len(data)} of {self.tar_size} bytes)")
        return data


@dataclass
class InputListing:
    items: list[InputItem]
    label_names: list[str]
    notes: list[dict]  # things worth recording that are not inputs (an empty class folder, ...)
    kind: str  # tree | flat | list | wds | voc

    def sha256(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.ref}\t{it.label}\t{it.mask}\n".encode())
        return h.hexdigest()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_inputs(src: str) -> InputListing:
    if is_remote(src):
        return _list_remote_tars(src)
    if not os.path.exists(src):
        raise UsageError(f"{src}: no such file or directory")
    if os.path.isfile(src):
        if src.endswith(".tar"):
            return _list_tars([src])
        root = voc_root_of_split(src)
        return _list_voc(root, src) if root else _list_file(src)
    if any(is_voc_root(p) for p in (src, os.path.join(src, "VOC2012"), os.path.join(src, "VOCdevkit", "VOC2012"))):
        raise UsageError(f"{src}: a VOC root; choose a split with --split (train, val, trainval, train_aug, ...)")
    entries = sorted(os.listdir(src))
    tars = [os.path.join(src, e) for e in entries if e.endswith(".tar")]
    if tars and not any(_is_image(e) for e in entries):
        return _list_tars(tars)
    dirs = [e for e in entries if os.path.isdir(os.path.join(src, e)) and not e.startswith(".")]
    if dirs:
        return _list_tree(src, dirs)
    items = [InputItem(os.path.join(src, e), -1) for e in entries if _is_image(e) and not os.path.isdir(os.path.join(src, e))]
    if not items:
        raise UsageError(f"{src}: no images found (expected SRC/<class>/<image>, images, a list file or .tar shards)")
    return InputListing(items, [], [], "flat")


def voc_root_of_split(path: str) -> str | None:
    """The VOC root a ROOT/ImageSets/Segmentation/<split>.txt file belongs to, or None for any other file."""
    if not path.endswith(".txt"):
        return None
    d = os.path.dirname(os.path.abspath(path))
    root = os.path.dirname(os.path.dirname(d))
    return root if os.path.relpath(d, root) == SPLIT_DIR and is_voc_root(root) else None


def voc_split_source(root: str, split: str) -> str:
    """`convert VOCROOT --split S` -> the split file to list: ROOT/ImageSets/Segmentation/S.txt (S a name, or a
    .txt file in that folder). UsageError (one line) for a root that is not one, or a split that is missing."""
    root = resolve_voc_root(root)
    if split.endswith(".txt") and os.path.sep in split:  # a split file given by its path
        if not os.path.isfile(split):
            raise UsageError(f"--split {split}: no such split file")
        path = split
    else:
        path = os.path.join(root, SPLIT_DIR, split if split.endswith(".txt") else split + ".txt")
    list_voc(root, path if path == split else split)  # the one place that says what is missing, in one line
    if voc_root_of_split(path) != os.path.abspath(root):
        raise UsageError(f"--split {split}: a split file must sit in {os.path.join(root, SPLIT_DIR)}/ "
                         f"(its root is where the images and masks are found)")
    return path


def _list_voc(root: str, split_file: str) -> InputListing:
    names = voc_class_names(root)
    items = [InputItem(img, -1, mask, mask_classes=len(names)) for img, mask in list_voc(root, split_file)]
    return InputListing(items, names, [], "voc")


def _list_tree(src: str, dirs: list[str]) -> InputListing:
    items, notes = [], []
    for label, d in enumerate(dirs):
        files = []
        for root, subdirs, names in os.walk(os.path.join(src, d)):
            subdirs.sort()
            files += [os.path.join(root, n) for n in sorted(names) if _is_image(n)]
        if not files:
            notes.append({"path": os.path.join(src, d), "reason": "class folder has no images"})
        items += [InputItem(f, label) for f in files]
    if not items:
        raise UsageError(f"{src}: class folders hold no images")
    return InputListing(items, dirs, notes, "tree")


def _label_map(raw: list[str]) -> tuple[list[str], dict[str, int]]:
    """Label strings -> (names, mapping): integers keep their value, names are numbered in sorted order."""
    if raw and all(v.lstrip("-").isdigit() for v in raw):
        return [str(i) for i in range(max(int(v) for v in raw) + 1)], {v: int(v) for v in raw}
    names = sorted(set(raw))
    return names, {v: i for i, v in enumerate(names)}


def _list_file(path: str) -> InputListing:
    rows = read_list_file(path, ("path", "label", "mask"))
    names, lab = _label_map([r[1] for r in rows if r[1] is not None])
    items = [InputItem(p, lab[l] if l is not None else -1, m) for p, l, m in rows]
    return InputListing(items, names, [], "list")


_SOURCE_CACHES: dict = {}


def source_cache(parent: str):
    """The per-process shard cache of a remote source folder (store/remote/blobs.py): one GET per tar."""
    if parent not in _SOURCE_CACHES:
        from ..store.remote import location_for
        from ..store.remote.blobs import ShardCache
        _SOURCE_CACHES[parent] = ShardCache(location_for(parent), "source")
    return _SOURCE_CACHES[parent]


def _list_remote_tars(src: str) -> InputListing:
    """WebDataset tar shards in object storage: SRC a prefix holding NAME.tar objects, or one .tar's URL
    (the only form over http(s), which cannot be listed)."""
    from ..store.remote import location_for
    if src.endswith(".tar"):
        parent, names = src.rsplit("/", 1)[0], [src.rsplit("/", 1)[1]]
    else:
        parent = src.rstrip("/")
        loc = location_for(parent)
        if getattr(loc, "http", False):
            raise UsageError(f"{src}: an http(s) source must name a .tar shard (http cannot be listed)")
        names = sorted(k for k in loc.list() if k.endswith(".tar") and "/" not in k)
        if not names:
            raise UsageError(f"{src}: no .tar shards there (remote sources are WebDataset shards)")
    cache = source_cache(parent)
    try:
        cache.fetch(names)  # in parallel, bounded
        return _list_tars([f"{parent}/{n}" for n in names],
                          lambda t: tarfile.open(fileobj=io.BytesIO(cache.get(t.rsplit("/", 1)[1])), mode="r"))
    except FileNotFoundError:
        raise UsageError(f"{src}: no such object") from None


def _list_tars(tars: list[str], open_tar=None) -> InputListing:
    items, classes, notes = [], [], []
    for t in tars:
        try:
            if open_tar is None:  # tarfile opens by path: a FIFO would hang it, a link to /dev/zero read as empty
                check_regular_file(t, OSError)
            with (open_tar(t) if open_tar else tarfile.open(t, "r")) as tf:
                members = [m for m in tf if m.isfile()]
                cls = {}
                for m in members:
                    key, _, ext = m.name.partition(".")
                    if ext == "cls" and m.size <= MAX_LABEL_MEMBER:
                        cls[key] = tf.extractfile(m).read().decode(errors="replace").strip()
                for m in members:
                    key, _, ext = m.name.partition(".")
                    if _is_image(m.name):
                        items.append((t, m, cls.get(key)))
        except (tarfile.TarError, OSError) as e:
            notes.append({"path": t, "reason": f"unreadable tar shard ({e})"})
    if not items:
        raise UsageError(f"no images found in {len(tars)} tar shard(s)")
    names, lab = _label_map([c for _, _, c in items if c is not None])
    out = [InputItem(f"{t}::{m.name}", lab[c] if c is not None else -1, None, m.offset_data, m.size)
           for t, m, c in items]
    return InputListing(out, names, notes, "wds")
