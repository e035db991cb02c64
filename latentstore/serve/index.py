"""The search index kept beside the store (`STORE/_serve/index.sqlite`): each sealed upload's metadata and
its top-5 predictions, for GET /v1/images/{id}, dedup of sealed uploads and GET /v1/search.

Written only by the sealer, after the store shard holding the uploads is committed, so everything it
lists is in the store. It is derived state kept in step with the store (INSERT OR IGNORE: re-sealing after a
crash re-adds nothing); the predictions live only here and in the log records. Readers are any serving
process (sqlite's WAL mode: readers never block the writer).
"""
from __future__ import annotations

import json
import sqlite3
import threading

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, sha256 TEXT UNIQUE NOT NULL, slot INTEGER NOT NULL, key TEXT, meta TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS images_key ON images(key);
CREATE TABLE IF NOT EXISTS predictions (id TEXT NOT NULL, label TEXT NOT NULL, score REAL NOT NULL,
    UNIQUE(id, label));
CREATE INDEX IF NOT EXISTS predictions_label ON predictions(label, score);
"""


class SearchIndex:
    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = sqlite3.connect(self.path, timeout=30)
            c.execute("PRAGMA synchronous=FULL")
        return c

    def add(self, metas: list[dict]) -> None:
        """Sealed uploads (each meta with its slot); idempotent."""
        c = self._conn()
        with c:
            c.executemany("INSERT OR IGNORE INTO images (id, sha256, slot, key, meta) VALUES (?, ?, ?, ?, ?)",
                          [(m["id"], m["sha256"], m["slot"], m.get("key"), json.dumps(m, sort_keys=True))
                           for m in metas])
            c.executemany("INSERT OR IGNORE INTO predictions (id, label, score) VALUES (?, ?, ?)",
                          [(m["id"], p["label"], p["score"]) for m in metas for p in m.get("predictions", [])])

    def get(self, image_id: str) -> dict | None:
        row = self._conn().execute("SELECT meta FROM images WHERE id = ?", (image_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def by_key(self, key: str) -> dict | None:
        row = self._conn().execute("SELECT meta FROM images WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def has_sha(self, sha: str) -> bool:
        return self._conn().execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone() is not None

    def search(self, label: str, min_score: float, limit: int) -> list[dict]:
        rows = self._conn().execute(
            "SELECT id, label, score FROM predictions WHERE label = ? AND score >= ? ORDER BY score DESC, id "
            "LIMIT ?", (label, min_score, limit)).fetchall()
        return [{"id": r[0], "label": r[1], "score": r[2]} for r in rows]

    def count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0]
