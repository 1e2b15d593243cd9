"""A fake Kaggle API on 127.0.0.1 that answers the real `kaggle` CLI, for offline tests.

The CLI talks to http://localhost/api/v1/... when `KAGGLE_API_ENVIRONMENT=LOCALHOST`; pointing
`HTTP_PROXY` at this server (with `NO_PROXY` empty) routes every request here, including the
302-redirected file download and the PUT of an uploaded submission. The request and response
shapes follow kagglesdk (competitions.CompetitionApiService, security.OAuthService): POST with a
camelCase JSON body, JSON answers, errors as `{"code": N, "message": ...}` with status N.

Use it from a test:

    with FakeKaggle(creds=FakeCreds(...)) as fake:
        fake.add_competition("demo", bundle=zip_bytes)
        for key, value in fake.env().items():
            monkeypatch.setenv(key, value)
        ...  # run the CLI; then inspect fake.calls, fake.uploads, fake.submissions,
        ...  # fake.datasets (owner/slug -> versions) and fake.kernels (owner/slug -> versions)

Besides competitions it answers what `kaggle datasets create/version` (blobs.BlobApiService,
datasets.DatasetApiService) and `kaggle kernels push` (kernels.KernelsApiService/SaveKernel)
send, and `kaggle competitions submit -k OWNER/KERNEL -v N` (CreateCodeSubmission).

Nothing is written to disk; credentials only ever live in memory.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

API_PREFIX = "/api/v1/"
RULES_MESSAGE = (
    "You must accept this competition's rules before you'll be able to download files "
    "or make submissions."
)


@dataclass(frozen=True)
class FakeCreds:
    username: str
    key: str
    api_token: str


@dataclass
class FakeCompetition:
    bundle: bytes  # what DownloadDataFiles serves as NAME.zip
    files: dict[str, bytes] = field(default_factory=dict)  # what DownloadDataFile serves
    rules_accepted: bool = True
    # Status the listing reports on its 1st, 2nd, ... call after a submission; the last repeats.
    statuses: list[str] = field(default_factory=lambda: ["PENDING", "COMPLETE"])
    public_score: str = "0.91234"
    echo_auth: bool = False  # answer 500 with the caller's credentials in the message
    title: str = "A fake competition"
    metric: str = "Categorization Accuracy"  # Kaggle's name of the evaluation metric


@dataclass
class Call:
    method: str
    path: str  # e.g. "competitions.CompetitionApiService/DownloadDataFiles" or "/upload/tok"
    body: Any  # parsed JSON for API calls, raw bytes for uploads, None otherwise
    authorized: bool


@dataclass
class FakeDatasetVersion:
    request: dict[str, Any]  # the CreateDataset / CreateDatasetVersion body, as sent
    files: dict[str, bytes]  # uploaded name -> bytes (a folder sent with --dir-mode zip: NAME.zip)


class FakeKaggle:
    """The server plus the state it serves; a context manager that runs it in a thread."""

    def __init__(self, creds: FakeCreds) -> None:
        self.creds = creds
        self.competitions: dict[str, FakeCompetition] = {}
        self.calls: list[Call] = []
        self.uploads: dict[str, bytes] = {}  # token -> bytes received by PUT
        self.submissions: list[dict[str, Any]] = []
        self.blobs: dict[str, str] = {}  # token -> file name announced by StartBlobUpload
        self.datasets: dict[str, list[FakeDatasetVersion]] = {}  # "owner/slug" -> versions
        self.kernels: dict[str, list[dict[str, Any]]] = {}  # "owner/slug" -> SaveKernel bodies
        self._polls: dict[int, int] = {}  # ref -> listing calls seen since it was created
        self._next_ref = 40_000_001
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def env(self) -> dict[str, str]:
        """Environment that sends the CLI here (credentials are set separately by the test)."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def add_competition(self, name: str, bundle: bytes, **kwargs: Any) -> FakeCompetition:
        comp = FakeCompetition(bundle=bundle, **kwargs)
        self.competitions[name] = comp
        return comp

    def api_calls(self) -> list[str]:
        return [c.path.rsplit("/", 1)[-1] for c in self.calls if c.method == "POST"]

    def __enter__(self) -> FakeKaggle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- authentication --------------------------------------------------------------------

    def is_authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer":
            return value == self.creds.api_token
        if scheme == "Basic":
            expected = f"{self.creds.username}:{self.creds.key}".encode()
            return base64.b64decode(value) == expected
        return False

    # ---- API methods: each returns (status, json body or None, extra headers) ---------------

    def handle_api(
        self, method: str, body: dict[str, Any], auth: str
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "IntrospectToken":
            if body.get("token") != self.creds.api_token:
                return _error(403, "Invalid token")
            return 200, {"active": True, "username": self.creds.username}, {}
        account = getattr(self, f"_account_{method}", None)
        if account is not None:  # datasets, blobs, kernels: no competition involved
            return account(body)
        comp_name = body.get("competitionName", "")
        comp = self.competitions.get(comp_name)
        needs_competition = method != "GetSubmission"
        if needs_competition and comp is None:
            return _error(404, f"Competition '{comp_name}' not found")
        if comp is not None and comp.echo_auth:
            # Like a server stack trace that dumps the request: the CLI prints it verbatim.
            return _error(500, f"internal error for {_decode(auth)}")
        if comp is not None and not comp.rules_accepted and method != "GetSubmissionLimits":
            return _error(403, RULES_MESSAGE)
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return _error(404, f"Unknown method {method}")
        return handler(comp_name, comp, body)

    def _api_DownloadDataFiles(self, name: str, comp: FakeCompetition, body: dict) -> tuple:
        return 302, None, {"Location": f"http://localhost/files/{name}/{name}.zip"}

    def _api_DownloadDataFile(self, name: str, comp: FakeCompetition, body: dict) -> tuple:
        file_name = body.get("fileName", "")
        if file_name not in comp.files:
            return _error(404, f"File '{file_name}' not found")
        return 302, None, {"Location": f"http://localhost/files/{name}/{file_name}"}

    def _api_StartSubmissionUpload(self, name: str, comp: FakeCompetition, body: dict) -> tuple:
        token = secrets.token_hex(8)
        return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}, {}

    def _api_CreateSubmission(self, name: str, comp: FakeCompetition, body: dict) -> tuple:
        token = body.get("blobFileTokens", "")
        if token not in self.uploads:
            return _error(400, "Unknown blob token")
        return self._submitted(name, body, token=token)

    def _submitted(self, name: str, body: dict, **fields: Any) -> tuple:
        """Record a submission to competition `name`; the CLI's answer."""
        with self._lock:
            ref = self._next_ref
            self._next_ref += 1
        self.submissions.append(
            {
                "ref": ref,
                "competition": name,
                **fields,
                "description": body.get("submissionDescription"),
                "date": datetime.now(timezone.utc).replace(tzinfo=None),
            }
        )
        return 200, {"message": f"Successfully submitted to {name}", "ref": ref}, {}

    def _api_CreateCodeSubmission(self, name: str, comp: FakeCompetition, body: dict) -> tuple:
        kernel = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}"
        versions = self.kernels.get(kernel, [])
        version = body.get("kernelVersion") or len(versions)
        if not 1 <= version <= len(versions):
            return _error(404, f"Notebook {kernel} version {version} not found")
        return self._submitted(
            name, body, kernel=kernel, kernel_version=version, file=body.get("fileName")
        )

    def _api_GetSubmissionLimits(self, name: str, comp: FakeCompetition | None, body: dict):
        n = sum(s["competition"] == name for s in self.submissions)
        limits = {"numToday": n, "numTotal": n, "numAllowedNow": 5 - n, "limitedByTotal": False}
        return 200, limits, {}

    def _api_ListSubmissions(self, name: str, comp: FakeCompetition, body: dict) -> tuple:
        mine = [s for s in reversed(self.submissions) if s["competition"] == name]
        for s in mine:
            self._polls[s["ref"]] = self._polls.get(s["ref"], 0) + 1
        rows = [self._submission_json(s) for s in mine]
        return 200, {"submissions": rows, "nextPageToken": ""}, {}

    def _submission_json(self, sub: dict[str, Any]) -> dict[str, Any]:
        comp = self.competitions[sub["competition"]]
        seen = self._polls.get(sub["ref"], 1)
        status = comp.statuses[min(seen, len(comp.statuses)) - 1]
        row = {
            "ref": sub["ref"],
            "date": sub["date"].isoformat(timespec="milliseconds") + "Z",
            "description": sub["description"],
            "fileName": "submission.csv",
            "status": status,
        }
        if status == "COMPLETE":
            row["publicScore"] = comp.public_score
        if status == "ERROR":
            row["errorDescription"] = "Submission has the wrong number of rows"
        return row

    # ---- datasets, blobs and kernels (the caller's own account) ------------------------------

    def _account_StartBlobUpload(self, body: dict) -> tuple:
        token = secrets.token_hex(8)
        self.blobs[token] = body.get("name", "")
        return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}, {}

    def _blob_files(self, files: list[dict]) -> dict[str, bytes] | None:
        tokens = [f.get("token", "") for f in files]
        if any(t not in self.uploads for t in tokens):
            return None
        return {self.blobs[t]: self.uploads[t] for t in tokens}

    def _account_GetDatasetStatus(self, body: dict) -> tuple:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return _error(404, f"Dataset {ref} not found")
        return 200, {"status": "READY"}, {}

    def _account_CreateDataset(self, body: dict) -> tuple:
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        files = self._blob_files(body.get("files", []))
        if files is None:
            return _error(400, "Unknown blob token")
        if body.get("ownerSlug") != self.creds.username:
            return _error(403, f"{body.get('ownerSlug')} is not you")
        self.datasets[ref] = [FakeDatasetVersion(body, files)]
        url = f"https://www.kaggle.com/datasets/{ref}"
        return 200, {"ref": ref, "url": url, "status": "ok", "error": ""}, {}

    def _account_CreateDatasetVersion(self, body: dict) -> tuple:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return _error(404, f"Dataset {ref} not found")
        files = self._blob_files(body.get("body", {}).get("files", []))
        if files is None:
            return _error(400, "Unknown blob token")
        self.datasets[ref].append(FakeDatasetVersion(body, files))
        url = f"https://www.kaggle.com/datasets/{ref}"
        return 200, {"ref": ref, "url": url, "status": "ok", "error": ""}, {}

    def _account_ListCompetitions(self, body: dict) -> tuple:
        """The listing `kaggle competitions list -s TEXT` (and init's metadata) reads: each
        competition whose slug holds the text, with its title and evaluation metric."""
        found = [
            {"ref": f"https://www.kaggle.com/competitions/{name}", "title": comp.title,
             "evaluationMetric": comp.metric, "category": "Featured"}
            for name, comp in self.competitions.items()
            if body.get("search", "") in name
        ]  # fmt: skip
        return 200, {"competitions": found}, {}

    def _account_SaveKernel(self, body: dict) -> tuple:
        ref = body.get("slug", "")
        if ref.split("/")[0] != self.creds.username:
            return _error(403, f"{ref} is not yours")
        self.kernels.setdefault(ref, []).append(body)
        n = len(self.kernels[ref])
        url = f"https://www.kaggle.com/code/{ref}"
        return 200, {"ref": ref, "url": url, "versionNumber": n, "error": ""}, {}

    # ---- plain HTTP: file downloads and blob uploads ---------------------------------------

    def file_bytes(self, path: str) -> bytes | None:
        parts = path.split("/")  # "", "files", competition, file name...
        if len(parts) < 4 or parts[1] != "files" or parts[2] not in self.competitions:
            return None
        comp = self.competitions[parts[2]]
        name = unquote("/".join(parts[3:]))
        if name == f"{parts[2]}.zip":
            return comp.bundle
        return comp.files.get(name)


def _decode(auth: str) -> str:
    scheme, _, value = auth.partition(" ")
    return base64.b64decode(value).decode() if scheme == "Basic" else value


def _error(status: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return status, {"code": status, "message": message}, {}


def _handler_for(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _path(self) -> str:
            # Through a proxy the request line carries the absolute URL.
            return urlsplit(self.path).path

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked_body()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _chunked_body(self) -> bytes:
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, obj: Any, headers: dict[str, str]) -> None:
            body = b"" if obj is None else json.dumps(obj).encode()
            self._send(status, body, {"Content-Type": "application/json", **headers})

        def do_POST(self) -> None:
            path = self._path()
            raw = self._body()
            body = json.loads(raw or b"{}")
            authorized = fake.is_authorized(self.headers.get("Authorization"))
            rel = path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else path
            fake.calls.append(Call("POST", rel, body, authorized))
            method = rel.rsplit("/", 1)[-1]
            if not authorized and method != "IntrospectToken":
                self._send_json(*_error(401, "Unauthenticated"))
                return
            self._send_json(*fake.handle_api(method, body, self.headers.get("Authorization", "")))

        def do_PUT(self) -> None:
            path = self._path()
            data = self._body()
            fake.calls.append(Call("PUT", path, data, True))
            token = path.rsplit("/", 1)[-1]
            if not path.startswith("/upload/"):
                self._send_json(*_error(404, "Not found"))
                return
            fake.uploads[token] = data
            self._send_json(200, {}, {})

        def do_GET(self) -> None:
            path = self._path()
            fake.calls.append(Call("GET", path, None, True))
            data = fake.file_bytes(path)
            if data is None:
                self._send_json(*_error(404, "Not found"))
                return
            self._send(200, data, {"Content-Type": "application/octet-stream"})

    return Handler
