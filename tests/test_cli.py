"""Bad input gets one clear line on stderr (exit 2), never a traceback, and nothing half-written."""

import pytest

from conftest import GPT2_TOKENIZER_DIR, run_cli

TRAIN = ["train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "1",
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
    from llmclf.outdir import prepare_output_dir
    out = tmp_path / "run"
    prepare_output_dir(out, "run", overwrite=False)  # an (empty) run directory llmclf made earlier
    (out / "metrics.json").write_text("{}")
    r = run_cli(*TRAIN, "--data-file", sms_file, "--out", out)
    _one_line_error(r, "run directory exists")
    assert (out / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_directory_with_foreign_files_is_never_replaced(tmp_path, sms_file, overwrite):
    out = tmp_path / "victim"
    out.mkdir()
    (out / "a.txt").write_text("mine")
    (out / "notes").mkdir()
    r = run_cli(*TRAIN, "--data-file", sms_file, "--out", out, *overwrite)
    _one_line_error(r, "not an llmclf run directory (holds a.txt, notes")
    assert (out / "a.txt").read_text() == "mine" and (out / "notes").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "notes"]


def test_a_failed_run_in_the_users_empty_directory_leaves_the_directory(tmp_path, sms_file):
    out = tmp_path / "mine"
    out.mkdir()  # the user's own (empty) folder: the run may fill it, a failure empties it but keeps it
    r = run_cli(*TRAIN, "--data-file", sms_file, "--out", out, "--trainable", "all", "--cache", "on")
    _one_line_error(r, "cache on: no block below the trainable part is frozen")
    assert out.is_dir() and list(out.iterdir()) == []


def test_baseline_overwrite_replaces_only_its_own_directory(tmp_path, sms_file):
    out = tmp_path / "base"
    assert run_cli("baseline", "--data-file", sms_file, "--out", out).returncode == 0
    _one_line_error(run_cli("baseline", "--data-file", sms_file, "--out", out), "baseline directory exists")
    r = run_cli("baseline", "--data-file", sms_file, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "results.csv").is_file()
    (out / "thesis.tex").write_text("years of work")
    _one_line_error(run_cli("baseline", "--data-file", sms_file, "--out", out, "--overwrite"),
                    "holds thesis.tex, which llmclf did not write")
    assert (out / "thesis.tex").read_text() == "years of work"


def test_experiment_refuses_a_directory_it_did_not_make(tmp_path, sms_file):
    out = tmp_path / "home"
    out.mkdir()
    (out / ".bashrc").write_text("alias ll='ls -l'")
    r = run_cli("experiment", "--preset", "book-table", "--model", "gpt2-tiny", "--only", "default",
                "--data-file", sms_file, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--out", out)
    _one_line_error(r, "not an llmclf experiment directory (holds .bashrc")
    assert sorted(p.name for p in out.iterdir()) == [".bashrc"]


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


@pytest.mark.parametrize("args", [["predict", "RUN", "hi", "--batch-size", "0"],
                                  ["serve", "RUN", "--max-texts", "0"], ["serve", "RUN", "--workers", "-1"]])
def test_counts_below_their_minimum_are_refused_by_the_parser(args):
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "invalid integer >= " in r.stderr.strip().splitlines()[-1]
