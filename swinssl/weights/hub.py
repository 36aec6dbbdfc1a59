"""Checkpoints by name: ``hf-hub:ORG/NAME[@REVISION]`` and ``http(s)://`` URLs become local files before
:mod:`swinssl.weights.io` reads them.

- Hub repos (transformers Swin folders, timm repos, swinssl ``--to hf`` / ``--to timm`` exports pushed as
  ``model.safetensors`` + ``config.json`` or ``model.json``) come through huggingface_hub's cache (``HF_HOME``,
  ``HF_HUB_CACHE``) with its resumable downloads; the hub names every weights file by its sha256 (the blob's
  name), which is checked on every load, so a damaged cache is refused rather than read.
- URLs (the official Microsoft release files) land in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``),
  downloaded with huggingface_hub's resumable ``http_get`` (torch.hub's own helper starts over after a cut), with
  their sha256 written beside them (``NAME.sha256``) and checked on every later load.
- ``HF_HUB_OFFLINE=1`` (or no network) serves both from their caches; a miss is one line naming the cache and
  how to fill it.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from swinssl.checkpoint_names import HUB_PREFIX
from swinssl.weights.checkpoint import CheckpointError
from swinssl.weights.io import HF_CONFIG, HF_WEIGHTS



@dataclass(frozen=True)
class Fetched:
    """A named checkpoint on disk: ``path`` is what io reads (a file, or an HF folder), ``sha256`` its weights'."""

    name: str
    path: Path
    sha256: str



def fetch(name: str) -> Fetched:
    """The local copy of the hub repo or URL ``name``, downloaded into its cache when missing (and allowed)."""
    return _from_hub(name) if name.startswith(HUB_PREFIX) else _from_url(name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _from_hub(name: str) -> Fetched:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"{name}: a hub name is hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    missed_offline = False

    def download(filename: str) -> Path | None:
        nonlocal missed_offline
        try:
            return Path(hf_hub_download(repo, filename, revision=revision or None))
        except RevisionNotFoundError:
            raise CheckpointError(f"{name}: the hub repo {repo} has no revision {revision!r}") from None
        except RepositoryNotFoundError:
            raise CheckpointError(f"{name}: no model repo {repo} on the HF Hub (or it is private or gated: log in "
                                  "with `hf auth login`)") from None
        except LocalEntryNotFoundError:  # offline or unreachable, and not in the cache
            missed_offline = True
            return None
        except EntryNotFoundError:
            return None

    weights = next((path for path in map(download, HF_WEIGHTS) if path is not None), None)
    if weights is None:
        if missed_offline:
            at = f" --revision {revision}" if revision else ""
            raise CheckpointError(f"{name} is not in the HF cache {constants.HF_HUB_CACHE} and the hub cannot be "
                                  f"reached (offline); fill the cache where there is network: hf download {repo}{at} "
                                  f"{' '.join(HF_WEIGHTS[:1])} {HF_CONFIG}")
        raise CheckpointError(f"{name}: the hub repo holds no {' or '.join(HF_WEIGHTS)}")
    sha256 = _checked_hub_file(name, weights)
    config = download(HF_CONFIG)
    if config is None:  # a swinssl --to timm export: its record beside the weights
        download(weights.with_suffix(".json").name)
    return Fetched(name, weights.parent if config is not None else weights, sha256)


def _checked_hub_file(name: str, path: Path) -> str:
    """The sha256 of a cached hub file, checked against the blob it links to (large files are named by their
    sha256 on the hub; small ones by a git hash, which is checked instead)."""
    blob = path.resolve()
    sha256 = sha256_of(blob)
    expected = blob.name
    if len(expected) == 40:  # a git blob: sha1 of "blob <size>\0" + content
        data = blob.read_bytes()
        found = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    else:
        found = sha256
    if len(expected) in (40, 64) and found != expected:
        raise CheckpointError(f"{name}: the cached {path.name} is damaged (its hash is {found[:12]}..., the hub's "
                              f"{expected[:12]}...); delete {blob} and load again to download it anew")
    return sha256


def _from_url(url: str) -> Fetched:
    from torch.hub import get_dir

    filename = Path(urllib.parse.urlparse(url).path).name
    if not filename:
        raise CheckpointError(f"{url}: the URL names no file")
    path = Path(get_dir()) / "checkpoints" / filename
    record = path.with_name(f"{filename}.sha256")
    if path.is_file():
        sha256 = sha256_of(path)
        recorded = record.read_text().split()[0] if record.is_file() else None
        if recorded is not None and recorded != sha256:
            raise CheckpointError(f"{url}: the cached {path} is damaged (sha256 {sha256[:12]}..., recorded at download "
                                  f"{recorded[:12]}...); delete it and load again to download it anew")
        if recorded is None:
            record.write_text(f"{sha256}  {filename}\n")
        return Fetched(url, path, sha256)
    if _offline():
        raise CheckpointError(f"{url} is not in the torch hub cache {path.parent} and downloads are off "
                              f"(HF_HUB_OFFLINE); fill the cache where there is network: curl -L -o {path} {url}")
    _download(url, path)
    sha256 = sha256_of(path)
    record.write_text(f"{sha256}  {filename}\n")
    return Fetched(url, path, sha256)


def _download(url: str, path: Path) -> None:
    """``url`` -> ``path`` through ``path.incomplete`` (resumed where a cut download stopped), with a progress bar;
    a web page or an HTTP error is one line and leaves no file."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.incomplete")
    try:
        with partial.open("ab") as handle:
            http_get(url, handle, resume_size=handle.tell(), displayed_filename=path.name)
    except HfHubHTTPError as error:
        partial.unlink(missing_ok=True)
        status = getattr(error.response, "status_code", None)
        raise CheckpointError(f"{url}: the server answered HTTP {status}, not a checkpoint" if status else
                              f"{url}: download failed ({str(error).splitlines()[0]})") from None
    except Exception as error:  # noqa: BLE001 - no route, refused, DNS, cut (the HTTP client's own classes)
        raise CheckpointError(f"{url}: download failed ({(str(error).splitlines() or [type(error).__name__])[0]}); "
                              "run again to resume, or set HF_HUB_OFFLINE=1 to use the cache only") from None
    with partial.open("rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        partial.unlink()
        raise CheckpointError(f"{url}: the server sent a web page, not a checkpoint file (a login or download page? "
                              "use the file's direct download link)")
    partial.replace(path)
