"""One check for every option (type, range, combination): the CLI, the library and experiment grids give
the same one-line error for a bad value, before anything is read or written."""

import pytest

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.errors import LlmclfError
from llmclf.options import FinetuneOptions, check_options

TRAIN = ["train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--tokenizer-dir", str(GPT2_TOKENIZER_DIR)]


@pytest.mark.parametrize("args,fragment", [
    (["--lora-rank", "0", "--trainable", "lora"], "--lora-rank must be at least 1, not 0"),
    (["--lr", "-1"], "--lr must be a positive number, not -1.0"),
    (["--epochs", "0"], "--epochs must be at least 1, not 0"),
    (["--eval-iter", "0"], "--eval-iter must be at least 1, not 0"),
])
def test_cli_refuses_bad_values_in_one_line(tmp_path, sms_file, args, fragment):
    out = tmp_path / "run"
    r = run_cli(*TRAIN, "--data-file", sms_file, "--out", out, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"llmclf: error: {fragment}"]
    assert not out.exists()


@pytest.mark.parametrize("change,fragment", [
    ({"lr": float("nan")}, "--lr must be a positive number"),
    ({"weight_decay": -0.1}, "--weight-decay must be a non-negative number"),
    ({"lora_alpha": 0}, "--lora-alpha must be a positive number"),
    ({"epochs": "5"}, "--epochs must be an integer, not '5'"),
    ({"balance": "yes"}, "--balance must be true or false"),
    ({"split": (0.9, 0.2)}, "--split 0.9 0.2: need 0 < train < 1"),
    ({"split": (0.7,)}, "--split must be two numbers"),
    ({"seed": -1}, "--seed must be at least 0"),
    ({"context_length": "0"}, "--context-length must be at least 1"),
    ({"context_length": "lots"}, "--context-length must be auto, longest, model or a number"),
    ({"pooling": "max"}, "--pooling must be one of last_nonpad, last, first, mean, mean_last, auto, not 'max'"),
    ({"cache": "yes"}, "--cache must be one of auto, on, off"),
    ({"dataset": "imdb"}, "--dataset must be one of sms-spam"),
    ({"device": "tpu"}, "--device must be auto, cpu, cuda, cuda:N or mps"),
    ({"fsdp": True}, "--fsdp needs trainable all"),
    ({"dtype": "bfloat16", "device": "mps"}, "--dtype bfloat16 is not offered on mps"),
])
def test_library_options_are_checked_like_the_cli(change, fragment):
    with pytest.raises(LlmclfError) as e:
        check_options(FinetuneOptions(out="x", **change))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_good_options_are_normalised():
    opts = check_options(FinetuneOptions(out="x", lr=1, split=[0.8, 0.1], context_length=64, device="cuda:1"))
    assert opts.lr == 1.0 and isinstance(opts.lr, float)
    assert opts.split == (0.8, 0.1) and opts.context_length == "64"


def test_finetune_checks_options_before_writing(tmp_path):
    from llmclf.finetune import finetune
    out = tmp_path / "run"
    with pytest.raises(LlmclfError, match="--eval-freq must be at least 1, not 0"):
        finetune(FinetuneOptions(out=str(out), model="gpt2-tiny", weights="random", pooling="mean", eval_freq=0))
    assert not out.exists()


def test_grid_rows_are_checked_by_the_same_rules(tmp_path):
    from llmclf.experiment import run_experiments
    grid = tmp_path / "grid.toml"
    grid.write_text('[[run]]\nname = "a"\nlora_rank = 0\ntrainable = "lora"\n')
    with pytest.raises(LlmclfError) as e:
        run_experiments(grid=str(grid), out=str(tmp_path / "exp"))
    assert "row 'a': lora_rank must be at least 1, not 0" in str(e.value)
    assert not (tmp_path / "exp").exists()


def test_the_train_command_line_is_derived_from_the_options():
    """Each option is declared once (options.py): `llmclf train` has a flag for every field, with the field's
    default and help, so a new field needs no second declaration."""
    import dataclasses

    from llmclf.cli import build_parser, train_options
    from llmclf.options import flag
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    parsed, builtin = train_options(parser.parse_args(["train"])), FinetuneOptions()
    for f in dataclasses.fields(FinetuneOptions):
        if f.name == "extra":
            continue
        assert flag(f.name) in flags or f.metadata.get("negate") in flags, f.name
        got = getattr(parsed, f.name)
        assert (tuple(got) if f.name == "split" else got) == getattr(builtin, f.name), f.name
        help_text = next(a.help for a in train._actions if a.dest == f.name and a.help and "same as" not in a.help)
        assert help_text.startswith(f.metadata["help"]), f.name
    off = parser.parse_args(["train", "--no-cache", "--no-balance", "--no-causal-mask", "--split", "0.8", "0.1"])
    assert (off.cache, off.balance, off.causal, off.split) == ("off", False, False, [0.8, 0.1])


def test_recipe_book_is_chapter_6_and_explicit_options_win_over_it():
    from llmclf.cli import build_parser, train_options
    from llmclf.options import BOOK_RECIPE
    book = train_options(build_parser().parse_args(["train", "--recipe", "book"]))
    assert (book.model, book.trainable, book.pooling, book.epochs, book.lr, book.batch_size, book.blend) == (
        "gpt2-small", "last_block", "last_nonpad", 5, 5e-5, 8, "off")
    assert all(getattr(book, k) == v for k, v in BOOK_RECIPE.items()) and book.recipe == "book"
    # an option given on the command line wins, even when it equals the default recipe's value
    default_model = FinetuneOptions().model
    mine = train_options(build_parser().parse_args(["train", "--recipe", "book", "--model", default_model,
                                                    "--lr", "1e-3"]))
    assert (mine.model, mine.lr, mine.trainable) == (default_model, 1e-3, "last_block")
    plain = train_options(build_parser().parse_args(["train"]))
    assert plain == FinetuneOptions() and plain.recipe == "default"


def test_recipe_in_a_grid_row_applies_its_values(tmp_path):
    from llmclf.experiment.grid import build_options
    opts = build_options({}, {}, {"recipe": "book", "epochs": 2}, tmp_path / "r", "row 'b'")
    assert (opts.model, opts.lr, opts.epochs) == ("gpt2-small", 5e-5, 2)
    with pytest.raises(LlmclfError, match="row 'a': recipe auto is a search of its own"):
        build_options({}, {}, {"recipe": "auto"}, tmp_path / "r", "row 'a'")


@pytest.mark.parametrize("change,fragment", [
    ({"recipe": "fast"}, "--recipe must be one of default, book, auto"),
    ({"schedule": "step"}, "--schedule must be one of constant, cosine, linear"),
    ({"warmup": 1.5}, "--warmup must be a fraction from 0 to 1"),
    ({"search_minutes": 0}, "--search-minutes must be a positive number"),
    ({"dtype": "float16"}, "--dtype must be one of auto, float32, bfloat16"),
    ({"cache_memory": -1}, "--cache-memory must be a number of GiB, 0 or more"),
    ({"cache_memory": float("inf")}, "--cache-memory must be a number of GiB, 0 or more"),
])
def test_recipe_schedule_and_precision_options_are_checked(change, fragment):
    with pytest.raises(LlmclfError) as e:
        check_options(FinetuneOptions(out="x", **change))
    assert fragment in str(e.value) and "\n" not in str(e.value)
