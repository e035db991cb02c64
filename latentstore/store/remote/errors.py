"""obstore's failures as the one-line errors a user can act on: no credentials, no such bucket, access
denied, the endpoint unreachable (and, from the store code, a half-written remote store)."""
from __future__ import annotations

import os

from ...errors import LatentstoreError, StoreError, UsageError

# any of these means the AWS credential chain has something to go on besides the instance metadata service
_AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI")


class AlreadyExists(StoreError):
    """A conditional create found the object there already."""


class PreconditionFailed(StoreError):
    """A conditional update found the object changed since we read it."""


def endpoint(url: str) -> str:
    if url.startswith("s3://"):
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    return url.split("/")[2] if "://" in url else url


def check_credentials(url: str) -> None:
    """Refuse early, in one line, where the AWS chain would fall through to the instance metadata service
    (a long wait on a machine that has none). LATENTSTORE_S3_INSTANCE_CREDENTIALS=1 allows that fall-through
    (EC2, ECS with an instance role); AWS_SKIP_SIGNATURE=true reads public buckets unsigned."""
    if not url.startswith("s3://"):
        return
    if any(os.environ.get(v) for v in _AWS_CREDENTIAL_VARS):
        return
    if os.environ.get("AWS_SKIP_SIGNATURE", "").lower() in ("1", "true"):
        return
    if os.environ.get("LATENTSTORE_S3_INSTANCE_CREDENTIALS") == "1":
        return
    raise UsageError(f"{url}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                     "AWS_ENDPOINT_URL for a non-AWS endpoint), AWS_SKIP_SIGNATURE=true for a public bucket, or "
                     "LATENTSTORE_S3_INSTANCE_CREDENTIALS=1 to use the instance's role")


def remote_error(e: Exception, where: str, action: str) -> LatentstoreError:
    """One line for an obstore exception raised while `action`ing `where`."""
    if isinstance(e, LatentstoreError):  # ours already (a refused fork, missing credentials)
        return e
    name, text = type(e).__name__, str(e)
    bucket = where.split("/")[2] if "://" in where else where
    if "NoSuchBucket" in text:
        return StoreError(f"{where}: no such bucket {bucket!r} at {endpoint(where)}")
    if name == "UnauthenticatedError" or any(c in text for c in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                                                 "ExpiredToken", "InvalidToken")):
        return StoreError(f"{where}: the endpoint {endpoint(where)} rejected the credentials (check "
                          "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    if name == "PermissionDeniedError" or "AccessDenied" in text or "403 Forbidden" in text:
        return StoreError(f"{where}: access denied ({action}) by {endpoint(where)}")
    if isinstance(e, FileNotFoundError):
        return StoreError(f"{where}: no such object")
    low = text.lower()
    if "BadScheme" in text:
        return UsageError(f"{where}: the endpoint {endpoint(where)} is plain http: set AWS_ALLOW_HTTP=true to allow it")
    if any(s in low for s in ("error sending request", "connection refused", "dns error", "timed out",
                              "connect error", "tcp connect", "operation timed out")):
        return StoreError(f"{where}: the endpoint {endpoint(where)} is unreachable ({action} failed)")
    if name in ("UnknownConfigurationKeyError", "InvalidPathError") or "not a valid url" in low:
        return UsageError(f"{where}: not a usable object-store URL ({text.splitlines()[0][:160]})")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), name)
    return StoreError(f"{where}: {action} failed ({first[:200]})")
