"""A GCS JSON API on localhost for the tests: gcp-storage-emulator, in memory.

`python -m tests.gcs_emulator PORT` serves until killed. Two additions to the emulator, as real GCS behaves:
- a download carries the `x-goog-generation` header, which tensorstore's GCS driver reads to make conditional
  writes (Orbax's OCDBT manifests); the emulator omits it;
- a bucket whose name starts with `denied` answers every request with 403, as GCS does to a caller without IAM
  permissions on it (the emulator enforces none).
"""

import functools
import sys
from http import HTTPStatus

from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.handlers import objects

DENIED_PREFIX = "denied"


def _with_denial(handler):
  @functools.wraps(handler)
  def serve(request, response, storage, *args, **kwargs):
    if request.params.get("bucket_name", "").startswith(DENIED_PREFIX):
      response.status = HTTPStatus.FORBIDDEN
      message = "caller does not have storage.objects.list access to the Google Cloud Storage bucket."
      response.json({"error": {"code": 403, "message": message, "errors": [{"reason": "forbidden"}]}})
      return
    handler(request, response, storage, *args, **kwargs)

  return serve


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  if response.status.value < 300:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]


_download = objects.download
objects.download = _download_with_generation
for module in (objects, buckets):  # Before `server` builds its routing table from these modules.
  for name in (
    "get",
    "ls",
    "insert",
    "download",
    "delete",
    "patch",
    "copy",
    "rewrite",
    "compose",
    "upload_partial",
    "xml_upload",
  ):
    if hasattr(module, name):
      setattr(module, name, _with_denial(getattr(module, name)))

from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top,wrong-import-position


if __name__ == "__main__":
  server.create_server("localhost", int(sys.argv[1]), in_memory=True).run()
