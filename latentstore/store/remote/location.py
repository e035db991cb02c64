"""Where a store's files live: a local folder or an object-store prefix (s3://, gs://, az://, http(s)://).

One small interface, `Location`, for every part of the store that reads or writes by name relative to
the store's root: whole reads, range reads, sizes, listing, puts (conditional ones too), deletes.
Object storage goes through obstore alone; its store is built by `obstore.store.from_url`, which reads
the standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
AWS_ALLOW_HTTP; GOOGLE_*; AZURE_*). Every obstore failure becomes one line (remote.errors).
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from datetime import timedelta

from ...errors import StoreError, UsageError
from .errors import AlreadyExists, PreconditionFailed, check_credentials, remote_error

# obstore's runtime (tokio) does not survive fork(): a process forked after its parent used obstore hangs
# on its first request. Such a process is refused in one line instead (DataLoader workers: use forkserver).
_OBSTORE_PID: int | None = None
FORK_MESSAGE = ("{url}: this process was forked after its parent used object storage, which obstore cannot "
                "survive; start DataLoader workers with multiprocessing_context='forkserver' (or 'spawn'), as "
                "latentstore's own loaders do for remote stores")

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "abfss://", "http://", "https://")
WRITABLE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "abfss://")


# "s3:/data/x.zarr", "s3:data", "gs:/x": a scheme without its "//" is a typo for a URL, never a folder one meant
_URL_TYPO = re.compile(r"^(s3|gs|az|abfss?|https?):(?!//)", re.IGNORECASE)


def check_not_url_typo(path) -> None:
    """Refuse a path that starts like an object-store URL but is not one: it would otherwise be taken as a local
    folder called "s3:" (a local tree written, exit 0). Every store path passes through is_remote, so here."""
    if isinstance(path, str) and _URL_TYPO.match(path):
        scheme = path.split(":", 1)[0].lower()
        raise UsageError(f"{path}: looks like a URL but is not one (write {scheme}://bucket/prefix; for a local "
                         f"folder whose name starts with '{scheme}:', write ./{path})")


def is_remote(path) -> bool:
    """An object-store URL (vs a local path). A malformed URL ("s3:/x", "s3:x") is a usage error, not a path."""
    check_not_url_typo(path)
    return isinstance(path, str) and path.lower().startswith(REMOTE_SCHEMES)


def join(root: str, rel: str) -> str:
    """root + "/" + rel for URLs, os.path.join for local paths."""
    return f"{root.rstrip('/')}/{rel}" if is_remote(root) else os.path.join(root, rel)


class NotListable(StoreError):
    """An http(s) location: objects are found by name (from the schema), never by listing."""


class ObjectLocation:
    """An object-store prefix: every name is relative to it ("latents/c/0/0/0/0", "_parts/INIT.json")."""

    local = False

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.http = self.url.lower().startswith(("http://", "https://"))  # read-only, and no listing
        self._store = None
        self._tmp: str | None = None

    @property
    def store(self):
        """The obstore store for this prefix (built lazily: DataLoader workers build their own)."""
        global _OBSTORE_PID
        if _OBSTORE_PID is not None and _OBSTORE_PID != os.getpid():
            raise StoreError(FORK_MESSAGE.format(url=self.url))
        if self._store is None:
            from obstore.store import from_url
            check_credentials(self.url)
            _OBSTORE_PID = os.getpid()
            # client options replace the environment's: AWS_ALLOW_HTTP (a plain-http endpoint) is carried over
            options = {"connect_timeout": "5s", "timeout": "120s"}
            if os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true") or self.url.startswith("http://"):
                options["allow_http"] = True  # a plain-http URL given as the store is the user's choice
            try:
                self._store = from_url(self.url, client_options=options,
                                       retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=20),
                                                     "backoff": {"init_backoff": timedelta(milliseconds=100),
                                                                 "max_backoff": timedelta(seconds=2), "base": 2.0}})
            except Exception as e:  # a malformed URL or configuration
                raise remote_error(e, self.url, "open") from None
        return self._store

    def __getstate__(self):  # obstore clients stay in the process that made them
        return {"url": self.url, "http": self.http, "_store": None, "_tmp": None}

    # ---- reading
    def read(self, rel: str) -> bytes:
        """The whole object; FileNotFoundError when it does not exist."""
        import obstore
        try:
            return bytes(obstore.get(self.store, rel).bytes())
        except FileNotFoundError:
            raise
        except Exception as e:
            raise remote_error(e, join(self.url, rel), "read") from None

    def read_range(self, rel: str, off: int, size: int) -> bytes:
        import obstore
        if size <= 0:
            return b""
        try:
            return bytes(obstore.get_range(self.store, rel, start=off, length=size))
        except Exception as e:
            raise remote_error(e, join(self.url, rel), "read") from None

    def head(self, rel: str) -> dict | None:
        """{"size", "e_tag", "last_modified"} or None when absent."""
        import obstore
        try:
            return obstore.head(self.store, rel)
        except FileNotFoundError:
            return None
        except Exception as e:
            raise remote_error(e, join(self.url, rel), "read") from None

    def size(self, rel: str) -> int | None:
        h = self.head(rel)
        return None if h is None else int(h["size"])

    def exists(self, rel: str) -> bool:
        return self.head(rel) is not None

    def list(self, prefix: str = "") -> dict[str, int]:
        """name -> size of every object under `prefix` (recursive)."""
        import obstore
        if self.http:  # plain HTTP has no listing (obstore would try WebDAV's PROPFIND): callers name objects
            raise NotListable(f"{self.url}: an http(s) store cannot be listed")
        out = {}
        try:
            for batch in obstore.list(self.store, prefix=prefix or None):
                for meta in batch:
                    out[meta["path"]] = int(meta["size"])
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise remote_error(e, self.url, "list") from None
        return out

    def local_copy(self, rel: str) -> str:
        """A local file with the object's bytes (for libraries that want a path: safetensors), removed at exit."""
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="latentstore-remote-")
            atexit.register(shutil.rmtree, self._tmp, True)
        path = os.path.join(self._tmp, rel.replace("/", "__"))
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(self.read(rel))
        return path

    # ---- writing
    def put(self, rel: str, data: bytes, create: bool = False, if_match: str | None = None) -> str:
        """Write the object; returns its e_tag. create=True: only if absent (S3 If-None-Match: *), else
        AlreadyExists; if_match: only if its e_tag is still this one, else PreconditionFailed."""
        import obstore
        mode = "create" if create else ({"e_tag": if_match} if if_match else "overwrite")
        try:
            return obstore.put(self.store, rel, data, mode=mode)["e_tag"]
        except Exception as e:
            name = type(e).__name__
            if name == "AlreadyExistsError" or (create and name == "PreconditionError"):
                raise AlreadyExists(join(self.url, rel)) from None
            if name == "PreconditionError":
                raise PreconditionFailed(join(self.url, rel)) from None
            raise remote_error(e, join(self.url, rel), "write") from None

    def delete(self, rels) -> None:
        import obstore
        rels = [rels] if isinstance(rels, str) else list(rels)
        for i in range(0, len(rels), 1000):
            try:
                obstore.delete(self.store, rels[i: i + 1000])
            except FileNotFoundError:
                pass
            except Exception as e:
                raise remote_error(e, self.url, "delete") from None

    def zarr_store(self, read_only: bool = True):
        """zarr v3's own ObjectStore over this prefix (experimental in zarr 3.1; used for zarr's reads only)."""
        import warnings

        from zarr.storage import ObjectStore
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ObjectStore(self.store, read_only=read_only)


class LocalLocation:
    """The same interface over a local folder, so readers take either."""

    local = True

    def __init__(self, root: str):
        self.url = root

    def path(self, rel: str) -> str:
        return os.path.join(self.url, rel)

    def read(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def read_range(self, rel: str, off: int, size: int) -> bytes:
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            return os.pread(fd, size, off)
        finally:
            os.close(fd)

    def size(self, rel: str) -> int | None:
        try:
            return os.path.getsize(self.path(rel))
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def list(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for d, _, files in os.walk(self.path(prefix) if prefix else self.url):
            for f in files:
                p = os.path.join(d, f)
                out[os.path.relpath(p, self.url).replace(os.sep, "/")] = os.path.getsize(p)
        return out

    def local_copy(self, rel: str) -> str:
        return self.path(rel)


_LOCATIONS: dict[str, ObjectLocation] = {}


def location_for(root: str):
    """The Location of a store root (object locations are shared per URL within a process)."""
    if not is_remote(root):
        return LocalLocation(root)
    key = root.rstrip("/")
    if key not in _LOCATIONS:
        _LOCATIONS[key] = ObjectLocation(key)
    return _LOCATIONS[key]


def require_writable(url: str) -> None:
    if not url.lower().startswith(WRITABLE_SCHEMES):
        raise StoreError(f"{url}: stores are written to s3://, gs:// or az:// (http(s):// is read-only)")
