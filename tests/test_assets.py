"""The digests that assets and hub downloads are verified with."""

import hashlib
import subprocess

from llmclf.assets import file_problem, git_blob_sha1, sha256_file


def test_git_blob_sha1_is_gits_object_id(tmp_path):
    f = tmp_path / "config.json"
    f.write_bytes(b"hello\n")
    assert git_blob_sha1(f) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"
    f.write_bytes(bytes(range(256)) * 5000)  # more than one read chunk
    got = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True).stdout.strip()
    assert git_blob_sha1(f) == got


def test_file_problem_names_what_is_wrong(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"abc")
    sha = hashlib.sha256(b"abc").hexdigest()
    assert sha256_file(f) == sha
    assert file_problem(f, sha256=sha, size=3, git_sha1=git_blob_sha1(f)) is None
    assert file_problem(f, sha256=sha, size=4) == "size 3 != 4"
    assert file_problem(f, sha256="0" * 64).startswith(f"sha256 {sha[:12]}... != 000000000000...")
    assert file_problem(f, git_sha1="1" * 40).startswith("git blob sha1 ")
    assert file_problem(tmp_path / "gone", sha256=sha) == "missing"
