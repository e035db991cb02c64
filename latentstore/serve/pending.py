"""Uploads accepted (fsynced in the intake log) and not yet in the search index: answered from memory (GET,
dedup by sha256, idempotency keys, search) until the sealer has them in the store and the index.

A known image uploaded again with another label keeps its first label; the answer names the one not applied.
An idempotency key is bound to the bytes it was first sent with: the same key with other bytes (another image,
an empty or a non-image body) is a 409, whether the first upload is still here or already sealed.
"""
from __future__ import annotations

import threading

from .uploads import Rejected


def key_conflict(key: str) -> Rejected:
    return Rejected(409, f"idempotency key {key!r} was first used with other bytes; use a new key", "key_conflict")


def label_note(known: dict, label: str | None) -> dict:
    """A known image re-uploaded with another label: the first label is kept (a label is part of the record the
    first acknowledgement made durable); the answer says which label was not applied, as `label_sent`."""
    return {"label_sent": label} if label is not None and label != known.get("label") else {}


class PendingUploads:
    def __init__(self):
        self.lock = threading.Lock()  # held by callers that read and then add (one batch's checks and its adds)
        self.meta: dict[str, dict] = {}  # sha256 -> meta of an accepted upload not yet in the index
        self.blobs: dict[str, list] = {}  # sha256 -> [symbols bytes, payload] of those
        self.by_id: dict[str, str] = {}  # image id -> sha256
        self.by_key: dict[str, str] = {}  # idempotency key -> sha256

    def lookup(self, image_id: str) -> dict | None:
        with self.lock:
            sha = self.by_id.get(image_id)
            return {**self.meta[sha], "sealed": False} if sha is not None else None

    def known(self, sha: str, key: str | None, index, image_id: str) -> dict | None:
        """The upload these bytes or this key already made (here, or sealed in `index`), or None; a 409 for a
        key first sent with other bytes."""
        with self.lock:
            s = self.by_key.get(key) if key else None
            if s is not None and s != sha:
                raise key_conflict(key)
            s = s or (sha if sha in self.meta else None)
            if s is not None:
                return dict(self.meta[s])
        m = index.by_key(key) if key else None
        if m is not None and m.get("sha256") != sha:
            raise key_conflict(key)
        return m or index.get(image_id)

    def conflict(self, key: str | None, sha: str, batch_keys: dict) -> Rejected | None:
        """Under `lock`: a 409 when `key` is held by other bytes here or earlier in the same batch."""
        other = (batch_keys.get(key) or self.by_key.get(key)) if key else None
        return key_conflict(key) if other is not None and other != sha else None

    def add(self, meta: dict, blobs: list) -> None:
        """Under `lock`: an upload whose record is durable."""
        sha = meta["sha256"]
        self.meta[sha], self.blobs[sha], self.by_id[meta["id"]] = meta, blobs, sha
        if meta.get("key"):
            self.by_key[meta["key"]] = sha

    def blobs_of(self, sha: str) -> list | None:
        with self.lock:
            return self.blobs.get(sha)

    def search(self, label: str, min_score: float, seen: set) -> list[dict]:
        with self.lock:
            return [{"id": m["id"], "label": label, "score": p["score"]} for m in self.meta.values()
                    for p in m.get("predictions", []) if p["label"] == label and p["score"] >= min_score
                    and m["id"] not in seen]

    def forget(self, shas) -> None:
        """Sealed and indexed: served from the index and the store from now on."""
        with self.lock:
            for sha in shas:
                m = self.meta.pop(sha, None)
                self.blobs.pop(sha, None)
                if m is not None:
                    self.by_id.pop(m["id"], None)
                    if m.get("key"):
                        self.by_key.pop(m["key"], None)

    def prune(self, index) -> None:
        """Another process seals: drop what the index now has."""
        with self.lock:
            shas = list(self.meta)
        self.forget([s for s in shas if index.has_sha(s)])
