"""The GCS emulator the storage tests start: gcp-storage-emulator's own CLI, with one header it leaves out.

Real GCS answers every media download with `x-goog-generation`. gcp-storage-emulator does not, and
tensorstore's gcs driver (under Orbax's checkpoints) takes an object's generation from that header and
refuses the read without it ("Malformed StorageGeneration"). This adds the header, from the object's own
metadata, to the emulator's download handler and then runs the emulator unchanged:

    python tests/gcs_emulator.py start --host 127.0.0.1 --port N --in-memory --default-bucket B
"""

import sys

from gcp_storage_emulator import __main__ as emulator
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]
    except Exception:  # noqa: BLE001 - a missing object: the handler itself answers 404
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download
server.HANDLERS = tuple(
    (regex, {method: download if handler is _download else handler for method, handler in handlers.items()})
    for regex, handlers in server.HANDLERS
)

if __name__ == "__main__":
    emulator.main(sys.argv[1:])
