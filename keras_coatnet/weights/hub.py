"""Fetching files from the Hugging Face Hub with `huggingface_hub`, checked.

`hf_hub_download` brings its cache, resumable downloads, tokens, mirrors
(`HF_ENDPOINT`) and offline mode (`HF_HUB_OFFLINE`). It checks sizes, not
contents, so every file is compared here with the hash the Hub serves as its
ETag (the SHA-256 of an LFS file, the git blob SHA-1 of a small one); a file
that fails is removed from the cache and named in the error.

`HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_HUB_CACHE` and `HF_HOME` are read at call
time (`huggingface_hub` itself reads them once, at import), so a process can
set them after importing this package.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from keras_coatnet._errors import first_line

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_TRUE = ("1", "on", "yes", "true")


class WeightsFetchError(ValueError, OSError):
    """Pretrained weights could not be fetched or failed their integrity check.

    Both a `ValueError` (like every other `weights=` problem) and an `OSError`
    (like other I/O failures), so either `except` clause catches it. The
    command line reports it as a failure while working (exit status 1).
    """

    exit_status = 1


@dataclass(frozen=True)
class HubFile:
    """A file fetched from the Hub: local path, content hash, revision."""

    path: str
    sha256: str | None  # the ETag when it is a SHA-256 (LFS files)
    etag: str
    commit: str
    url: str


def endpoint() -> str:
    """`$HF_ENDPOINT` if set, else `huggingface_hub`'s endpoint, without a trailing `/`."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    """Whether `HF_HUB_OFFLINE` (read now) or `huggingface_hub` says offline."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().lower() in _TRUE
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `huggingface_hub`'s default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def url_of(repo_id: str, filename: str, revision: str | None) -> str:
    return f"{endpoint()}/{repo_id}/resolve/{revision or 'main'}/{filename}"


def _options() -> str:
    return (
        "set HF_ENDPOINT to a mirror, or fetch the file once where the Hub is reachable "
        "and use the cache with HF_HUB_OFFLINE=1, or pass weights= the path of a local "
        "model.safetensors"
    )


def _git_blob_sha1(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_of(path) -> str:
    """SHA-256 of a file in lowercase hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(pointer: str) -> None:
    """Remove a cached snapshot entry and the blob it points to."""
    blob = os.path.realpath(pointer)
    for path in (pointer, blob):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def verify(file: HubFile) -> HubFile:
    """Compare the file with the hash in its ETag; on a mismatch remove it and raise."""
    if _SHA256.fullmatch(file.etag):
        actual, kind = sha256_of(file.path), "SHA-256"
    elif _SHA1.fullmatch(file.etag):
        actual, kind = _git_blob_sha1(file.path), "git blob SHA-1"
    else:
        return file  # no content hash to compare with (not a Hub server)
    if actual != file.etag:
        _remove(file.path)
        raise WeightsFetchError(
            f"{file.url} failed its integrity check: the Hub's {kind} is {file.etag}, the "
            f"downloaded file's is {actual}; the file was removed from the cache, try again"
        )
    return file


def download(repo_id: str, filename: str, revision: str | None = None) -> HubFile:
    """Fetch `filename` of model repo `repo_id` into the Hub cache (not yet verified).

    Raises:
        WeightsFetchError: With the URL and what to do, for a missing repo,
            revision or file, a refused connection, offline mode without a
            cached copy, or a download cut short.
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    url = url_of(repo_id, filename, revision)
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir(),
            endpoint=endpoint(),
            local_files_only=offline(),
        )
    except hf_errors.RevisionNotFoundError:
        raise WeightsFetchError(f"revision {revision!r} of {repo_id!r} not found ({url})") from None
    except hf_errors.RemoteEntryNotFoundError:
        raise WeightsFetchError(f"{repo_id!r} has no file {filename!r} ({url})") from None
    except hf_errors.RepositoryNotFoundError:
        raise WeightsFetchError(
            f"no repository {repo_id!r} at {endpoint()} ({url}); if it is private or gated, "
            "log in with `hf auth login` or set HF_TOKEN"
        ) from None
    except hf_errors.LocalEntryNotFoundError as error:
        if offline():
            reason = "HF_HUB_OFFLINE is set and the file is not in the cache " + cache_dir()
        else:
            cause = error.__cause__ or error
            reason = f"the Hub did not answer ({type(cause).__name__}: {first_line(cause)})"
        raise WeightsFetchError(f"could not fetch {url}: {reason}; {_options()}") from None
    except Exception as error:  # noqa: BLE001 - the client's I/O errors: httpx's and OSError
        raise WeightsFetchError(
            f"could not fetch {url}: {type(error).__name__}: {first_line(error)}; nothing "
            f"was cached, try again or {_options()}"
        ) from None
    blob = os.path.realpath(path)
    etag = os.path.basename(blob)
    commit = os.path.basename(os.path.dirname(path))
    sha256 = etag if _SHA256.fullmatch(etag) else None
    return HubFile(path=path, sha256=sha256, etag=etag, commit=commit, url=url)


def exists(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether the repo has `filename` (a HEAD request; `False` when unreachable)."""
    if offline():
        return False
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(
            hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint()), timeout=10
        )
    except Exception:  # noqa: BLE001 - only a hint for an error message
        return False
    return True
