#!/usr/bin/env python3
"""A chat backend talking to codebox over HTTP, with the Python standard library only.

It plays one turn of a chat in which the user attaches a CSV and asks for an Excel report:

1. uploads a generated ``sales.csv`` for a fresh chat and message (user ``demo-user``);
2. runs code that turns it into ``/mnt/data/report.xlsx`` (with openpyxl only, so that the
   small test image ``codebox-python:test`` works as well as the full one);
3. renders the assistant's answer, whose ``sandbox:/mnt/data/report.xlsx`` link becomes a
   signed download link;
4. lists the chat's files;
5. downloads the report through the signed link, with no token, and checks that its sha256
   and size are those of the File.

Each step is printed. Any failure stops the script with one clear line on stderr and exit
status 1.

Configuration, from the environment:

- ``CODEBOX_URL``: the server (default ``http://127.0.0.1:8080``);
- ``CODEBOX_TOKEN``: a service token. Without it, the first service token of
  ``./codebox-data/tokens.toml`` is used: the file ``codebox serve`` writes when no token
  is configured.

Run it next to a server::

    codebox serve --image codebox-python:test &
    python3 examples/python_client.py

It needs Python 3.9 or later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Tuple

DEFAULT_URL = "http://127.0.0.1:8080"
TOKENS_FILE = os.path.join(".", "codebox-data", "tokens.toml")
USER_ID = "demo-user"
# A run may take up to the server's maximum timeout (5 minutes by default), and the first run
# of a message also starts its container, so requests get a generous deadline.
REQUEST_TIMEOUT_SECS = 330
# The report the code writes, and the answer the assistant gives about it.
REPORT_NAME = "report.xlsx"
ASSISTANT_TEXT = "Here is your report: [report.xlsx](sandbox:/mnt/data/report.xlsx)"

# The code the "model" wrote. `{csv_path}` is filled in with the path the upload answered,
# because codebox renames an attachment whose name is taken (`sales (1).csv`).
REPORT_CODE = """\
import csv
from openpyxl import Workbook
from openpyxl.styles import Font

with open({csv_path}, newline="") as source:
    rows = list(csv.DictReader(source))

totals = {{}}
for row in rows:
    units, revenue = totals.get(row["region"], (0, 0.0))
    totals[row["region"]] = (units + int(row["units"]), revenue + float(row["revenue"]))

book = Workbook()
summary = book.active
summary.title = "By region"
summary.append(["region", "units", "revenue"])
for cell in summary[1]:
    cell.font = Font(bold=True)
for region in sorted(totals):
    units, revenue = totals[region]
    summary.append([region, units, round(revenue, 2)])
orders = book.create_sheet("Orders")
orders.append(list(rows[0].keys()))
for row in rows:
    orders.append([row["order"], row["region"], int(row["units"]), float(row["revenue"])])
book.save("/mnt/data/{report}")
print(f"Saved /mnt/data/{report}: {{len(rows)}} orders in {{len(totals)}} regions")
"""


class ClientError(Exception):
    """A step that failed; its message is the one line the user sees."""


def main() -> int:
    base_url = os.environ.get("CODEBOX_URL", DEFAULT_URL).rstrip("/")
    try:
        token = service_token()
        client = Client(base_url, token, USER_ID)
        run_demo(client)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_demo(client: Client) -> None:
    # The chat backend owns chat and message ids; fresh ones keep every demo run separate.
    chat_id = f"demo-chat-{uuid.uuid4().hex}"
    message_id = f"demo-msg-{uuid.uuid4().hex}"
    print(f"codebox at {client.base_url}, user {USER_ID}, chat {chat_id}, message {message_id}")

    step("0/5", "health")
    health = client.request("GET", "/healthz", authorized=False)
    print(f"  /healthz: {health.get('status')}")

    step("1/5", "upload sales.csv")
    csv_bytes = generate_csv(200)
    upload = client.upload(
        "sales.csv", csv_bytes, "text/csv", {"chat_id": chat_id, "message_id": message_id}
    )
    expect(upload.get("source") == "upload", f"the upload has source {upload.get('source')!r}")
    expect(upload.get("size") == len(csv_bytes), "the upload's size is not the bytes sent")
    expect(
        upload.get("sha256") == hashlib.sha256(csv_bytes).hexdigest(),
        "the upload's sha256 is not that of the bytes sent",
    )
    print(f"  {upload['id']}  {upload['path']}  {upload['size']} bytes  sha256 {upload['sha256'][:16]}…")

    step("2/5", "run code: csv -> xlsx")
    code = REPORT_CODE.format(csv_path=json.dumps(upload["path"]), report=REPORT_NAME)
    run = client.request(
        "POST",
        "/v1/runs",
        {
            "chat_id": chat_id,
            "message_id": message_id,
            "code": code,
            "language": "python",
            "file_ids": [upload["id"]],
            "timeout_secs": 60,
        },
    )
    print(f"  run {run['id']}: {run['status']}, exit {run['exit_code']}, {run['duration_ms']} ms")
    for line in run.get("stdout", "").splitlines():
        print(f"  | {line}")
    if run["status"] != "succeeded":
        reason = f" ({run['reason']})" if run.get("reason") else ""
        raise ClientError(
            f"the run {run['status']}{reason}, exit code {run['exit_code']}; stderr:\n{run['stderr']}"
        )
    for truncation in run.get("truncated", []):
        print(f"  left out: {truncation['path']}: {truncation['reason']}")
    report = next((f for f in run["files"] if f["name"] == REPORT_NAME), None)
    if report is None:
        names = [f["name"] for f in run["files"]]
        raise ClientError(f"the run succeeded but registered {names}, not {REPORT_NAME}")
    print(f"  registered {report['id']}  {report['path']}  {report['size']} bytes  {report['content_type']}")

    step("3/5", "render the assistant's answer")
    rendered = client.request(
        "POST", f"/v1/messages/{quote(message_id)}/render", {"text": ASSISTANT_TEXT}
    )["text"]
    print(f"  before: {ASSISTANT_TEXT}")
    print(f"  after:  {rendered}")
    link = markdown_link(rendered, REPORT_NAME)
    # Signed links carry their own expiry, so two renderings differ in the query; the file
    # they point at must be the same.
    expect(
        link.split("?", 1)[0] == report["download_url"].split("?", 1)[0],
        f"the rendered link {link} does not point at {report['id']}",
    )

    step("4/5", "list the chat's files")
    listing = client.request("GET", f"/v1/chats/{quote(chat_id)}/files")
    print(f"  {listing['total_files']} file(s)")
    for listed_message, files in listing["messages"].items():
        for file in files:
            print(f"  {listed_message}  {file['name']:<14} {file['size']:>8} bytes  {file['source']}")
    listed = [f["id"] for f in listing["messages"].get(message_id, [])]
    expect(report["id"] in listed, f"{report['id']} is not in the chat's listing")

    step("5/5", "download the report through the signed link (no token)")
    digest, size, headers = client.download(link)
    print(f"  {size} bytes  sha256 {digest}")
    print(f"  Content-Type: {headers.get('Content-Type')}")
    print(f"  Content-Disposition: {headers.get('Content-Disposition')}")
    expect(size == report["size"], f"downloaded {size} bytes, the File says {report['size']}")
    expect(
        digest == report["sha256"],
        f"the download's sha256 {digest} is not the File's {report['sha256']}",
    )
    print("ok: the downloaded report matches its File's sha256")


class Client:
    """The few requests a chat backend makes, with codebox's errors turned into ClientError."""

    def __init__(self, base_url: str, token: str, user_id: str) -> None:
        self.base_url = base_url
        self.token = token
        self.user_id = user_id

    def _headers(self, authorized: bool) -> Dict[str, str]:
        if not authorized:
            return {}
        return {"Authorization": f"Bearer {self.token}", "X-User-Id": self.user_id}

    def request(
        self, method: str, path: str, body: Optional[Any] = None, authorized: bool = True
    ) -> Dict[str, Any]:
        """Sends a JSON request (or none) and returns the JSON answer."""
        headers = self._headers(authorized)
        headers["Accept"] = "application/json"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self._json(urllib.request.Request(self.base_url + path, data, headers, method=method))

    def upload(
        self, name: str, content: bytes, content_type: str, fields: Dict[str, str]
    ) -> Dict[str, Any]:
        """POST /v1/files with a multipart body built by hand: the text fields, then the file."""
        boundary = f"codebox-{uuid.uuid4().hex}"
        parts: List[bytes] = []
        for field, value in fields.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n'.encode()
                + value.encode()
                + b"\r\n"
            )
        # A quote or line break in a file name would end the header early; browsers
        # percent-encode them, and so does this.
        safe_name = name.replace("\\", "%5C").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        headers = self._headers(True)
        headers["Accept"] = "application/json"
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        request = urllib.request.Request(
            self.base_url + "/v1/files", b"".join(parts), headers, method="POST"
        )
        return self._json(request)

    def download(self, url: str) -> Tuple[str, int, Any]:
        """GETs `url` with no token and hashes the body as it streams in.

        Returns the hex sha256, the byte count and the response headers.
        """
        digest = hashlib.sha256()
        size = 0
        with self._open(urllib.request.Request(url, method="GET")) as response:
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
            return digest.hexdigest(), size, response.headers

    def _json(self, request: urllib.request.Request) -> Dict[str, Any]:
        with self._open(request) as response:
            payload = response.read()
        try:
            return json.loads(payload)
        except ValueError as error:
            raise ClientError(
                f"{request.get_method()} {request.full_url}: the answer is not JSON ({error})"
            ) from error

    def _open(self, request: urllib.request.Request) -> Any:
        where = f"{request.get_method()} {redact(request.full_url)}"
        try:
            return urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECS)
        except urllib.error.HTTPError as error:
            raise ClientError(f"{where}: HTTP {error.code}: {api_error(error)}") from error
        except urllib.error.URLError as error:
            raise ClientError(
                f"{where}: cannot reach codebox ({error.reason}); is `codebox serve` running "
                f"and CODEBOX_URL right?"
            ) from error
        except OSError as error:
            raise ClientError(f"{where}: {error}") from error


def api_error(error: urllib.error.HTTPError) -> str:
    """The code and message of codebox's error body, or the raw body when it has none."""
    body = error.read().decode("utf-8", "replace")
    try:
        detail = json.loads(body)["error"]
        return f"{detail['code']}: {detail['message']}"
    except (ValueError, KeyError, TypeError):
        return body.strip() or error.reason


def redact(url: str) -> str:
    """`url` without its signature, so that an error line does not hand out a working link."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    if not any(key == "signature" for key, _ in query):
        return url
    kept = [(key, "…" if key == "signature" else value) for key, value in query]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept, safe="…")))


def service_token() -> str:
    """CODEBOX_TOKEN, else the first service token of ./codebox-data/tokens.toml."""
    token = os.environ.get("CODEBOX_TOKEN", "").strip()
    if token:
        return token
    try:
        with open(TOKENS_FILE, "rb") as file:
            text = file.read().decode()
    except OSError as error:
        raise ClientError(
            f"no CODEBOX_TOKEN set and cannot read {TOKENS_FILE} ({error.strerror}); "
            "set CODEBOX_TOKEN to a service token"
        ) from error
    for entry in parse_tokens(text):
        if entry.get("role") == "service" and entry.get("token"):
            return entry["token"]
    raise ClientError(f"{TOKENS_FILE} has no service token; set CODEBOX_TOKEN")


def parse_tokens(text: str) -> List[Dict[str, str]]:
    """The `[[tokens]]` entries of a tokens file."""
    try:
        import tomllib  # Python 3.11 and later.

        return list(tomllib.loads(text).get("tokens", []))
    except ImportError:
        pass
    except ValueError as error:
        raise ClientError(f"{TOKENS_FILE} is not valid TOML ({error})") from error
    # Before 3.11, a small reader for the only shape `codebox serve` writes: `[[tokens]]`
    # headers followed by `key = "string"` lines.
    entries: List[Dict[str, str]] = []
    current: Optional[Dict[str, str]] = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[[tokens]]":
            current = {}
            entries.append(current)
            continue
        if line.startswith("["):
            current = None
            continue
        match = re.fullmatch(r'([A-Za-z0-9_-]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(#.*)?', line)
        if current is not None and match:
            current[match.group(1)] = json.loads(f'"{match.group(2)}"')
    return entries


def generate_csv(rows: int) -> bytes:
    """A small sales table; the same on every run, so reports can be compared."""
    regions = ["north", "south", "east", "west"]
    lines = ["order,region,units,revenue"]
    for order in range(1, rows + 1):
        units = (order * 37) % 50 + 1
        revenue = units * (4.5 + (order * 13) % 7)
        lines.append(f"{order},{regions[order % 4]},{units},{revenue:.2f}")
    return ("\n".join(lines) + "\n").encode()


def markdown_link(text: str, label: str) -> str:
    """The target of the Markdown link `[label](...)` in `text`; it must be an http(s) URL."""
    match = re.search(r"\[" + re.escape(label) + r"\]\(([^)\s]+)\)", text)
    if not match:
        raise ClientError(f"the rendered text has no [{label}](...) link: {text!r}")
    link = match.group(1)
    if not link.startswith(("http://", "https://")):
        raise ClientError(f"the link of {label} was not rendered into a URL: {link!r}")
    return link


def quote(segment: str) -> str:
    """One path segment, percent-encoded."""
    return urllib.parse.quote(segment, safe="")


def expect(condition: bool, failure: str) -> None:
    if not condition:
        raise ClientError(failure)


def step(number: str, title: str) -> None:
    print(f"[{number}] {title}")


if __name__ == "__main__":
    sys.exit(main())
