"""Paths of everything a run reads or writes, through `etils.epath`: local folders and `gs://` alike.

`path("gs://bucket/run")` keeps its scheme (epath reads and writes it through gcsfs, see simdino_jax/__init__.py);
a local path becomes absolute (Orbax wants absolute paths). Shared files are written by process 0 only
(`write_shared`). `check_access` and `check_writable_folder` turn what would fail mid-run on cloud storage into one line
before anything runs (docs/operations.md, "Cloud storage").
"""

import functools
import getpass
import os
import pathlib
import socket
import sys
import tempfile
from urllib import parse

import jax
from etils import epath
from etils.epath import backend

GCS_API = "https://storage.googleapis.com"


class StorageError(ValueError):
  """Cloud storage that cannot be used as configured; the message names the path and the fix."""


def is_remote(location: str | os.PathLike) -> bool:
  """Whether `location` names a cloud path (`scheme://...`)."""
  return "://" in os.fspath(location)


def path(location: str | os.PathLike) -> epath.Path:
  """An `epath.Path` of `location`: remote paths (`scheme://...`) unchanged, local ones made absolute."""
  p = epath.Path(location)
  return p if is_remote(location) else p.expanduser().resolve()


def move(source: epath.Path, target: epath.Path) -> None:
  """Renames file or folder `source` to `target`; on cloud storage, which has neither renames nor empty folders,
  the objects are copied (server-side rewrites) and the originals deleted."""
  if is_remote(source):
    fs = backend.fsspec_backend.fs(source)
    fs.copy(os.fspath(source), os.fspath(target), recursive=True)
    fs.rm(os.fspath(source), recursive=True)
  else:
    source.rename(target)


def write_shared(location: str | os.PathLike, content: str | bytes) -> None:
  """Writes a shared file (text or bytes) from process 0 only; every process holds the same content."""
  if jax.process_index() == 0:
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
      target.write_bytes(content)
    else:
      target.write_text(content)


def _gcs_endpoint() -> str:
  """The GCS API this process talks to: STORAGE_EMULATOR_HOST (an emulator) or Google's."""
  endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "") or GCS_API
  return endpoint if "://" in endpoint else f"http://{endpoint}"


@functools.cache
def check_access(location: str | os.PathLike) -> None:
  """Raises StorageError, in one line naming `location` and the fix, when its bucket cannot be used: host
  unreachable, no credentials, bucket missing, permission denied. Reads only; local paths pass."""
  location = os.fspath(location)
  if not location.startswith("gs://"):
    return
  bucket = location[len("gs://") :].split("/")[0]
  endpoint = _gcs_endpoint()
  if endpoint == GCS_API:
    import google.auth  # pylint: disable=import-outside-toplevel
    from google.auth import exceptions  # pylint: disable=import-outside-toplevel

    try:
      google.auth.default()
    except exceptions.DefaultCredentialsError:
      raise StorageError(
        f"{location}: no Google Cloud credentials on this machine. Run `gcloud auth "
        "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account "
        "key file (a TPU VM uses its service account)."
      ) from None
  url = parse.urlparse(endpoint)
  try:
    socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=10).close()
  except OSError as e:
    raise StorageError(
      f"{location}: cannot reach the GCS API at {endpoint} ({e}). Check this machine's network "
      "(a TPU VM reaches it by default), or STORAGE_EMULATOR_HOST if you use an emulator."
    ) from None
  try:
    exists = path(f"gs://{bucket}").exists()  # Lists the bucket's objects (storage.objects.list).
  except OSError as e:
    if "Forbidden" in str(e) or "403" in str(e):
      raise StorageError(
        f"{location}: permission denied on gs://{bucket}. Grant this machine's account "
        "roles/storage.objectUser on the bucket (gcloud storage buckets add-iam-policy-binding "
        f"gs://{bucket} --member=... --role=roles/storage.objectUser)."
      ) from None
    raise StorageError(f"{location}: {str(e).splitlines()[0]}") from None
  if not exists:
    raise StorageError(
      f"{location}: the bucket gs://{bucket} does not exist. Create it (gcloud storage buckets "
      f"create gs://{bucket} --location=REGION, in the TPU's region) or fix the path."
    )
  _first_tensorstore_request(location, bucket)


# What tensorstore's C++ logger prints, once a process, when it looks for credentials where a TPU VM (or the
# emulator) keeps none, before it takes the VM's service account: noise, not an error.
_TENSORSTORE_CREDENTIALS_NOISE = ("google_auth_provider", "Could not find the credentials file")


def _first_tensorstore_request(location: str, bucket: str) -> None:
  """Makes this process's first request through tensorstore's GCS driver (Orbax writes array data through it)
  with the file descriptor of stderr caught, so that the line its C++ logger prints while it looks for
  credentials is dropped; anything else written meanwhile is passed on. A failed request is a StorageError."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel

  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as caught:
    os.dup2(caught.fileno(), 2)
    try:
      ts.KvStore.open({"driver": "gcs", "bucket": bucket}).result().read("simdino_jax_probe").result()
      error = None
    except Exception as e:  # pylint: disable=broad-except
      error = e
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    caught.seek(0)
    lines = caught.read().decode(errors="replace").splitlines(keepends=True)
  sys.stderr.write("".join(l for l in lines if not any(n in l for n in _TENSORSTORE_CREDENTIALS_NOISE)))
  if error is not None:
    raise StorageError(
      f"{location}: tensorstore, which writes the checkpoints' arrays, cannot read "
      f"gs://{bucket}: {str(error).splitlines()[0]}"
    )


def nearest_existing_folder(location: str, what: str) -> pathlib.Path:
  """The nearest existing folder of a local path (itself or an ancestor); StorageError when it is a file."""
  target = pathlib.Path(location).expanduser().absolute()
  ancestor = next(p for p in (target, *target.parents) if p.exists())
  if not ancestor.is_dir():
    raise StorageError(
      f"{what}={location}: {ancestor} is a file, not a folder. Choose a {what} whose parents are "
      "folders, or move that file away."
    )
  return ancestor


def check_writable_folder(location: str | os.PathLike, what: str = "--workdir") -> None:
  """Raises StorageError, in one line naming the path and the fix, when a folder cannot be created or written
  there: a file where a folder of its path should be, no write permission on its nearest existing folder, or (for
  gs://) what check_access finds."""
  location = os.fspath(location)
  if is_remote(location):
    check_access(location)
    return
  ancestor = nearest_existing_folder(location, what)
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise StorageError(
      f"{what}={location}: no permission to write in {ancestor} (user {getpass.getuser()}). "
      f"Choose a {what} you can write, or grant write access to {ancestor}."
    )
