"""The GCS emulator the storage tests start: gcp-storage-emulator's own CLI, with one header it leaves out.

Real GCS answers every media download with `x-goog-generation`. gcp-storage-emulator does not, and
tensorstore's gcs driver (under Orbax's checkpoints) takes an object's generation from that header and
refuses the read without it ("Malformed StorageGeneration"). This adds the header, from the object's own
metadata, to the emulator's download handler. Real GCS also honours `ifGenerationMatch` on uploads and deletes
(HTTP 412 when the object's generation, 0 for none, differs), which prunejax's gs:// locks rely on and the
emulator ignores: this checks it, under one lock with the write itself. Then it runs the emulator unchanged:

    python tests/gcs_emulator.py start --host 127.0.0.1 --port N --in-memory --default-bucket B
"""

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus

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


_conditional = threading.Lock()  # a precondition and the write it guards happen as one


def _generation(storage, bucket, name):
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except Exception:  # noqa: BLE001 - no such object: generation 0
        return "0"


def precondition(handler, object_id):
    def checked(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if not wanted:
            return handler(request, response, storage, *args, **kwargs)
        with _conditional:
            name = object_id(request)
            if _generation(storage, request.params["bucket_name"], name) != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet: precondition failed"}})
                return None
            return handler(request, response, storage, *args, **kwargs)

    return checked


def _upload_name(request):
    return request.query["name"][0] if "name" in request.query else (request.data or {}).get("meta", {}).get("name")


_replace = {
    _download: download,
    objects.insert: precondition(objects.insert, _upload_name),
    objects.delete: precondition(objects.delete, lambda request: request.params["object_id"]),
}
objects.download, objects.insert, objects.delete = (_replace[f] for f in (_download, objects.insert, objects.delete))


class _Server(http.server.HTTPServer):
    """The emulator serves one request at a time; a deeper accept queue than socketserver's 5 keeps the
    connections of two training processes' parallel checkpoint writes waiting instead of dropped."""

    request_queue_size = 256


http.server.HTTPServer = _Server  # this process only: the emulator's, which builds its HTTPServer at start
server.HANDLERS = tuple(
    (regex, {method: _replace.get(handler, handler) for method, handler in handlers.items()})
    for regex, handlers in server.HANDLERS
)


def start(bucket: str) -> tuple[subprocess.Popen, str]:
    """This emulator in a child process on a free local port, serving `bucket` in memory, once it accepts
    connections: (the process, its STORAGE_EMULATOR_HOST). Its log is `log_path(port)`.

    `serving` sets STORAGE_EMULATOR_HOST and clears TENSORSTORE_GCS_HTTP_URL: `storage.prepare_tensorstore`
    derives the latter from the former in the process that checkpoints, and one left in the test process by
    an earlier module's emulator would send the next module's training processes' tensorstore to a dead port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    log = open(log_path(port), "wb")  # noqa: SIM115 (the child's stdout)
    server = subprocess.Popen([*cmd, "--default-bucket", bucket], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.2)


def log_path(port: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"gcs-emulator-{port}.log")


def check_alive(server: subprocess.Popen, host: str) -> None:
    """Fail naming the emulator's exit code and its log's tail when it died while a test used it."""
    if server.poll() is not None:
        path = log_path(int(host.rsplit(":", 1)[1]))
        with open(path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise AssertionError(f"the GCS emulator exited {server.returncode} mid-test; its log {path} ends:\n{tail}")


@contextlib.contextmanager
def serving(bucket: str) -> Iterator[subprocess.Popen]:
    """This emulator for one test or module: STORAGE_EMULATOR_HOST points at it and TENSORSTORE_GCS_HTTP_URL is
    cleared (see `start`), both restored after; on the way out it is woken (a test may have frozen it with
    SIGSTOP), checked to be still alive (`check_alive`) and stopped."""
    server, host = start(bucket)
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    os.environ.pop("TENSORSTORE_GCS_HTTP_URL", None)
    try:
        yield server
    finally:
        try:
            if server.poll() is None:
                os.kill(server.pid, signal.SIGCONT)
            check_alive(server, host)
        finally:
            server.kill()
            server.wait(10)
            os.environ.pop("TENSORSTORE_GCS_HTTP_URL", None)  # in-process gs:// checkpoints set it to this emulator
            if old is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = old


if __name__ == "__main__":
    emulator.main(sys.argv[1:])
