"""Stores on object storage (s3://, gs://, az://; http(s):// read-only): one obstore-backed Location for
reading and writing by name, a bounded read cache that fetches whole shards in parallel, the writer's
staging and commit protocol, and its lease lock (docs/object-storage.md)."""
from .location import LocalLocation, ObjectLocation, is_remote, join, location_for  # noqa: F401
