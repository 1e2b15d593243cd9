"""Kaggle I/O: the official `kaggle` CLI run as a subprocess.

Public functions (stages call these; nothing here imports a stage):

- `download_competition(competition, dest, files=None, force=False)`: runs
  `kaggle competitions download -c NAME -p TMP [-f FILE]`, extracts the competition zip and any
  archive found inside it (zip, tar, tar.gz/bz2/xz, 7z incl. planet's .tar.7z), deletes the
  extracted archives, writes `dest/.kaggle-download.json` and only then replaces `dest` whole.
  A finished download of the same competition and files is not repeated unless `force`.
- `safe_extract(archive, dest)` and `extract_nested(root)`: pipeline/archives.py's, re-exported
  here for the stages that extract through this module.
- `submit(competition, file, message) -> int | None`: `kaggle competitions submit`; returns the
  submission ref the CLI prints (None when an older CLI does not print one).
- `poll_submission(competition, ref, message, attempts, interval_s) -> dict`: reads
  `kaggle competitions submissions --csv` up to `attempts` times, `interval_s` seconds apart,
  until the submission is scored; returns `{"status", "submission_ref", "public_score"}` with
  status "complete", "error" or "pending" (still scoring when the attempts ran out).

Every user-facing failure raises `PipelineError` with one actionable line: missing `kaggle`
command, missing credentials, rules not accepted (403), unknown competition (404), no network.

Credentials: the CLI inherits `os.environ` (KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN,
~/.kaggle/kaggle.json are read by the CLI itself, never by this module's callers). CLI output is
captured; a snippet of it is relayed in an error only when it contains none of the credential
values known to this process. The download's output (the CLI's own progress bar) is also
streamed to stderr as it comes, with those values masked.

Try it by hand (needs credentials and accepted rules):
    python -c "from pathlib import Path; from pipeline.kaggle import download_competition as d; \
d('digit-recognizer', Path('data/raw'))"
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.archives import extract_nested, safe_extract
from pipeline.files import PipelineError, atomic_dir, read_json, write_json

MARKER = ".kaggle-download.json"  # written last into a finished download
NO_KAGGLE = "the `kaggle` command is not installed: run `pip install kaggle`"
MIN_SECRET_LEN = 4  # shorter "secrets" would match ordinary text and blank every message
CREDENTIALS_HELP = (
    "no Kaggle credentials found: create an API token at https://www.kaggle.com/settings/api "
    "and save it as ~/.kaggle/kaggle.json, or export KAGGLE_USERNAME and KAGGLE_KEY, "
    "or export KAGGLE_API_TOKEN"
)


# ---- the CLI as a subprocess -----------------------------------------------------------------


def kaggle_executable() -> str:
    """The `kaggle` beside this interpreter (the project's venv) first, then the one on PATH."""
    beside = Path(sys.executable).parent / "kaggle"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kaggle")
    if found is None:
        raise PipelineError(NO_KAGGLE)
    return found


def _run_cli(
    args: list[str],
    competition: str,
    timeout_s: float | None = None,
    stream: bool = False,
    cmd: list[str] | None = None,
) -> str:
    """Run `kaggle ARGS` (or `cmd`, the same request made through the CLI's Python API); return
    its output, or raise PipelineError explaining the failure. With `stream`, the CLI's download
    progress is also relayed to stderr as it comes."""
    cmd = cmd or [kaggle_executable(), *args]
    try:
        if stream:
            code, out = _streamed(cmd)
        else:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,  # never wait on an interactive prompt
            )
            code, out = proc.returncode, proc.stdout + "\n" + proc.stderr
    except FileNotFoundError as e:
        raise PipelineError(NO_KAGGLE) from e
    except subprocess.TimeoutExpired as e:
        raise PipelineError(
            f"`kaggle {args[0]} {args[1]}` gave no answer within {timeout_s:.0f} s: "
            "check your network and try again"
        ) from e
    if code != 0:
        raise PipelineError(_explain_failure(out, competition, args))
    return out if stream else proc.stdout


PROGRESS = re.compile(r"^Downloading |\d+%\|")  # the CLI's "Downloading X to Y" and tqdm bar


def _streamed(cmd: list[str]) -> tuple[int, str]:
    """(exit code, output) of cmd; the pieces that are its progress (a bar redraws with carriage
    returns) are relayed to stderr as they come, masked of credential values. Anything else (a
    failure's text or traceback) is only returned, unmasked, for `_explain_failure` (which
    withholds output holding a credential)."""
    secrets, seen = _secret_values(), []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as proc:  # fmt: skip
        pending = b""
        while chunk := proc.stdout.read1(4096):
            pending += chunk
            *done, pending = re.split(rb"(?<=[\r\n])", pending)
            for piece in done:
                seen.append(piece.decode("utf-8", "replace"))
                if PROGRESS.search(seen[-1]):
                    sys.stderr.write(_masked(seen[-1], secrets))
                    sys.stderr.flush()
        seen.append(pending.decode("utf-8", "replace"))
    return proc.returncode, "".join(seen)


def _masked(text: str, secrets: set[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _has_http(text: str, code: int) -> bool:
    """An HTTP status as a whole number: not the digits inside a port or an id (a proxy on
    127.0.0.1:44013 is no 401)."""
    return re.search(rf"(?<!\d){code}(?!\d)", text) is not None


def _explain_failure(output: str, competition: str, args: list[str]) -> str:
    """Turn the CLI's output into one actionable line (the CLI's wording varies by version)."""
    text = output.lower()
    if "authentication required" in text or _has_http(text, 401) or "unauthorized" in text:
        return CREDENTIALS_HELP
    missing = _has_http(text, 403) or _has_http(text, 404) or "not found" in text
    if args[0] in ("datasets", "kernels") and missing:
        return (
            f"Kaggle has no {args[0][:-1]} '{competition}' of yours ({_last_line(output)}): check "
            "export.owner (your username), export.dataset and export.kernel in params.yaml"
        )
    if _has_http(text, 403) or "accept this competition's rules" in text or "forbidden" in text:
        return (
            f"Kaggle refused access to '{competition}' (403): accept the competition's rules at "
            f"https://www.kaggle.com/competitions/{competition}/rules, then run again"
        )
    if _has_http(text, 404) or "not found" in text:
        what, keys = f"competition '{competition}'", "competition.name"
        if "-f" in args:
            what += f" or file '{args[args.index('-f') + 1]}'"
            keys += " and competition.files"
        return (
            f"Kaggle has no {what} (404): check {keys} in params.yaml against "
            f"https://www.kaggle.com/competitions/{competition}/data"
        )
    network = (
        "connectionerror",
        "max retries exceeded",
        "failed to establish a new connection",
        "name or service not known",
        "temporary failure in name resolution",
        "unable to connect to proxy",
        "connection refused",
        "timed out",
    )
    if any(marker in text for marker in network):
        return "cannot reach Kaggle: check your network connection (and HTTPS_PROXY if you use one)"
    return f"`kaggle {' '.join(args[:2])}` failed: {_last_line(output)}"


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    if _contains_secret(output):
        return "(output withheld because it contained credentials)"
    return lines[-1][:300]


def _secret_values() -> set[str]:
    """Credential values this process can see, so that output echoing them is never relayed."""
    values = {os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")}
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR") or os.path.expanduser("~/.kaggle")
    with contextlib.suppress(OSError, ValueError, AttributeError):  # absent or not JSON
        values.add(str(json.loads(Path(config_dir, "kaggle.json").read_text()).get("key", "")))
    with contextlib.suppress(OSError):
        values.add(Path(config_dir, "access_token").read_text().strip())
    return {v for v in values if len(v) >= MIN_SECRET_LEN}


def _contains_secret(text: str) -> bool:
    return any(secret in text for secret in _secret_values())


# ---- metadata --------------------------------------------------------------------------------

# `kaggle competitions list` prints no evaluation metric; the API it calls returns one
METADATA = """
import json, sys
from kaggle.api.kaggle_api_extended import KaggleApi
api = KaggleApi()
api.authenticate()
found = api.competitions_list(search=sys.argv[1]).competitions or []
for c in found:
    if c.ref.rstrip("/").rsplit("/", 1)[-1] == sys.argv[1]:
        print(json.dumps({"title": c.title, "metric": c.evaluation_metric}))
"""


def competition_metadata(competition: str, timeout_s: float = 120) -> dict[str, str]:
    """{"title", "metric"}: the competition's title and Kaggle's name of its evaluation metric."""
    args = ["competitions", "list", "-s", competition]
    cmd = [sys.executable, "-c", METADATA, competition]
    out = _run_cli(args, competition, timeout_s, cmd=cmd).strip()
    if not out:
        raise PipelineError(
            f"Kaggle has no competition '{competition}' (not in `kaggle competitions list -s "
            f"{competition}`): check the slug against https://www.kaggle.com/competitions"
        )
    return json.loads(out.splitlines()[-1])


# ---- download --------------------------------------------------------------------------------


def download_competition(
    competition: str, dest: Path, files: list[str] | None = None, force: bool = False
) -> None:
    dest = Path(dest)
    wanted = {"competition": competition, "files": sorted(files) if files else None}
    if not force and _finished_download(dest) == wanted:
        print(
            f"{dest} already holds the Kaggle download of '{competition}' "
            "(`python -m pipeline download --force` downloads it again)"
        )
        return
    with atomic_dir(dest) as tmp:
        for name in files or [None]:
            args = ["competitions", "download", "-c", competition, "-p", str(tmp)]
            _run_cli([*args, "-f", name] if name else args, competition, stream=True)
        if not any(tmp.iterdir()):
            raise PipelineError(f"`kaggle competitions download` wrote nothing for '{competition}'")
        _extract_all(tmp, bundle=tmp / f"{competition}.zip")
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(tmp / MARKER, {**wanted, "downloaded_at": stamp})
    print(f"downloaded '{competition}' into {dest}")


def _finished_download(dest: Path) -> dict[str, Any] | None:
    try:
        marker = read_json(dest / MARKER)
    except (OSError, ValueError):
        return None
    return {"competition": marker.get("competition"), "files": marker.get("files")}


def _extract_all(root: Path, bundle: Path) -> None:
    """Extract the competition bundle into `root`, then every archive found under it."""
    if bundle.is_file():
        safe_extract(bundle, root)  # as Kaggle's own --unzip does: its files land in root
        bundle.unlink()
    extract_nested(root)


# ---- submission ------------------------------------------------------------------------------


def submit(competition: str, file: Path, message: str) -> int | None:
    args = ["competitions", "submit", "-c", competition, "-f", str(file), "-m", message]
    out = _run_cli(args, competition, timeout_s=600)
    found = re.search(r"Submission ref:\s*(\d+)", out)
    return int(found.group(1)) if found else None


def submit_kernel(competition: str, kernel: str, version: int, message: str) -> int | None:
    """A code competition: submit the output of notebook `kernel` (owner/slug) at `version`."""
    args = ["competitions", "submit", competition, "-k", kernel, "-v", str(version),
            "-f", "submission.csv", "-m", message]  # fmt: skip
    out = _run_cli(args, competition, timeout_s=600)
    found = re.search(r"Submission ref:\s*(\d+)", out)
    return int(found.group(1)) if found else None


def push_dataset(ref: str, folder: Path, message: str) -> bool:
    """`kaggle datasets version` of dataset `ref` from `folder`, or `create` the first time
    (folders zipped, so that they survive); True when it was created."""
    exists = _succeeds(["datasets", "status", ref])
    zipped = ["-p", str(folder), "--dir-mode", "zip"]
    args = ["datasets", "version" if exists else "create", *zipped]
    args += ["-m", message] if exists else []
    out = _run_cli(args, ref, timeout_s=3600)
    _raise_on_error_line(out, args, ref)
    return not exists


def push_kernel(ref: str, folder: Path) -> int:
    """`kaggle kernels push`; the new version's number."""
    args = ["kernels", "push", "-p", str(folder)]
    out = _run_cli(args, ref, timeout_s=600)
    _raise_on_error_line(out, args, ref)
    found = re.search(r"Kernel version (\d+) successfully", out)
    if not found:
        raise PipelineError(f"`kaggle kernels push` for {ref} named no version: {_last_line(out)}")
    return int(found.group(1))


def _succeeds(args: list[str]) -> bool:
    try:
        _run_cli(args, args[-1], timeout_s=120)
    except PipelineError:
        return False
    return True


def _raise_on_error_line(out: str, args: list[str], ref: str) -> None:
    """The CLI reports some refusals on stdout with exit code 0 ("Dataset creation error: …")."""
    for line in out.splitlines():
        if re.search(r"\berror\b", line, re.IGNORECASE):
            raise PipelineError(f"`kaggle {args[0]} {args[1]}` for {ref}: {line.strip()[:300]}")


def poll_submission(
    competition: str, ref: int | None, message: str, attempts: int, interval_s: float
) -> dict[str, Any]:
    """Follow one submission in the listing; `message` identifies it when `ref` is unknown."""
    result: dict[str, Any] = {"status": "pending", "submission_ref": ref, "public_score": None}
    for attempt in range(attempts):
        if attempt:
            time.sleep(interval_s)
        args = ["competitions", "submissions", "-c", competition, "--csv"]
        row = _find_submission(_parse_listing(_run_cli(args, competition, 120)), ref, message)
        if row is None:
            continue  # a fresh submission can take a moment to be listed
        result = {
            "status": _status(row.get("status", "")),
            "submission_ref": int(row["ref"]) if str(row.get("ref", "")).isdigit() else ref,
            "public_score": _score(row.get("publicScore")),
        }
        if result["status"] != "pending":
            break
    return result


def _parse_listing(out: str) -> list[dict[str, str]]:
    """CSV rows of `kaggle competitions submissions --csv`, skipping any warning lines above."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("ref,")), None)
    if start is None:
        return []
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def _find_submission(rows: list[dict[str, str]], ref: int | None, message: str) -> dict | None:
    for row in rows:  # newest first
        if (ref is not None and row.get("ref") == str(ref)) or (
            ref is None and row.get("description") == message
        ):
            return row
    return None


def _status(raw: str) -> str:
    """'SubmissionStatus.COMPLETE' (CLI 1.7+) or 'complete' (older) -> 'complete'."""
    name = raw.rsplit(".", 1)[-1].lower()
    return name if name in ("complete", "error") else "pending"


def _score(raw: str | None) -> float | None:
    try:
        return float(raw) if raw not in (None, "", "None") else None
    except ValueError:
        return None
