"""Bad input gets one clear line on stderr (exit 2), never a traceback, and nothing half-written."""

import pytest

from conftest import GPT2_TOKENIZER_DIR, run_cli

TRAIN = ["train", "--model", "gpt2-tiny", "--weights", "random", "--epochs", "1",
         "--tokenizer-dir", str(GPT2_TOKENIZER_DIR)]


def _one_line_error(r, fragment):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    err = [x for x in r.stderr.strip().split("\n") if x.startswith("llmclf: error:")]
    assert len(err) == 1 and fragment in err[0], r.stderr


@pytest.mark.parametrize("setup,extra,fragment", [
    (lambda p: None, [], "no such file"),
    (lambda p: p.write_text(""), [], "file is empty"),
    (lambda p: p.write_text("text,label\nhi,a\nho,b\n"), ["--text-column", "body"], "no text column 'body'"),
    (lambda p: p.write_text("text,label\nhi,a\nho,a\n"), [], "at least two classes"),
    (lambda p: p.write_bytes(b"text,label\n\xe9t\xe9,a\nx,b\n"), [], "not UTF-8"),
    (lambda p: p.write_text("text,label\n  ,a\n\t,b\n"), [], "no usable rows"),
])
def test_train_data_errors(tmp_path, setup, extra, fragment):
    data = tmp_path / "data.csv"
    setup(data)
    out = tmp_path / "run"
    r = run_cli(*TRAIN, "--data-file", data, "--out", out, *extra)
    _one_line_error(r, fragment)
    assert not out.exists()


def test_existing_run_dir_is_refused_unless_overwrite(tmp_path, sms_file):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli(*TRAIN, "--data-file", sms_file, "--out", out)
    _one_line_error(r, "run directory exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_model_and_bad_options(tmp_path, sms_file):
    r = run_cli("train", "--model", "gpt5-huge", "--data-file", sms_file, "--out", tmp_path / "r")
    _one_line_error(r, "unknown model 'gpt5-huge'")
    r = run_cli(*TRAIN, "--data-file", sms_file, "--out", tmp_path / "r", "--context-length", "99999")
    _one_line_error(r, "--context-length 99999")
    assert not (tmp_path / "r").exists()


def test_model_dir_whose_weights_do_not_match(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "gpt2", "n_embd": 64, "n_layer": 1, "n_head": 2, "vocab_size": 10}')
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    r = run_cli("generate", "--model", d, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "hello")
    _one_line_error(r, "do not match")


def test_predict_errors(tmp_path, tiny_run):
    _one_line_error(run_cli("predict", tmp_path / "nope", "hi"), "no such run or model directory")
    _one_line_error(run_cli("predict", tiny_run), "nothing to classify")
    _one_line_error(run_cli("predict", tiny_run, "--input", tmp_path / "missing.txt"), "no such file")


def test_experiment_only_with_an_unknown_row_is_refused_before_writing(tmp_path, sms_file):
    out = tmp_path / "exp"
    r = run_cli("experiment", "--preset", "book-table", "--model", "gpt2-tiny", "--only", "default,nosuch",
                "--data-file", sms_file, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--out", out)
    _one_line_error(r, "no row named 'nosuch'")
    assert not out.exists()
