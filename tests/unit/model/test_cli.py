"""CLI subcommands through argparse, as the lead's streamrec/cli.py will call them."""

from __future__ import annotations

import argparse
import json

import pytest

from streamrec.config import Settings
from streamrec.errors import NoModelError
from streamrec.model.cli import add_commands

from .conftest import TINY_CONFIG, make_interactions, write_item_text, write_sequences


def _run(argv, settings):
    parser = argparse.ArgumentParser(prog="streamrec")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args, settings)


def _tiny_flags():
    c = TINY_CONFIG
    return [
        "--d-model",
        str(c["d_model"]),
        "--n-layers",
        "1",
        "--d-ff",
        str(c["d_ff"]),
        "--max-len",
        str(c["max_len"]),
        "--max-epochs",
        "2",
        "--no-progress",
    ]


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", device="cpu")


def test_missing_sequences_file_is_clear(tmp_path, settings):
    with pytest.raises(ValueError, match=r"missing\.txt"):
        _run(["train", "--sequences", str(tmp_path / "missing.txt"), "--no-progress"], settings)


def test_bad_flag_values_rejected(tmp_path, settings):
    seq = write_sequences(tmp_path / "s.txt", make_interactions(10))
    with pytest.raises(SystemExit):
        _run(["train", "--sequences", str(seq), "--time-budget", "-3"], settings)
    with pytest.raises(ValueError, match="--n-heads 3"):
        _run(["train", "--sequences", str(seq), "--n-heads", "3"], settings)


def test_no_current_model(tmp_path, settings):
    seq = tmp_path / "s.txt"
    seq.write_text("u a b c\n")
    with pytest.raises(NoModelError, match="streamrec train --sequences"):
        _run(["evaluate", "--sequences", str(seq)], settings)
    with pytest.raises(ValueError, match="v0042"):
        _run(["models", "promote", "v0042"], settings)


def test_train_register_evaluate_finetune_promote(tmp_path, settings, tiny_data, capsys):
    seq = write_sequences(tmp_path / "s.txt", tiny_data)
    text = write_item_text(tmp_path / "t.tsv")
    assert _run(["train", "--sequences", str(seq), "--item-text", str(text), *_tiny_flags()], settings) == 0
    assert "now current" in capsys.readouterr().out
    from streamrec.model.registry import ModelRegistry

    reg = ModelRegistry(settings.registry_dir)
    v1 = reg.current_version()
    assert v1 and v1.startswith("v0001-")
    # evaluate the current model, with baselines, as JSON; an unknown item comes from text
    seq2 = tmp_path / "s2.txt"
    seq2.write_text("z1 i1 i4 brand-new\nz2 i2 i5 i8\n")
    text2 = tmp_path / "t2.tsv"
    text2.write_text("item_id\ttitle\nbrand-new\tred lipstick shade 100\n")
    assert (
        _run(["evaluate", "--sequences", str(seq2), "--item-text", str(text2), "--json", "--baselines"], settings) == 0
    )
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["users"] == 2 and rep["items_added_from_text"] == 1
    assert {"model_metrics", "popularity", "cooccurrence", "lift_over_popularity"} <= set(rep)
    # plain table
    assert _run(["evaluate", "--sequences", str(seq), "--baselines"], settings) == 0
    assert "lift vs popularity" in capsys.readouterr().out
    # finetune into a second version, then promote it
    assert (
        _run(
            ["finetune", "--sequences", str(seq2), "--item-text", str(text2), "--max-epochs", "1", "--no-progress"],
            settings,
        )
        == 0
    )
    versions = [v.version for v in reg.list()]
    assert len(versions) == 2 and reg.current_version() == v1
    assert _run(["models", "promote", versions[1]], settings) == 0
    assert reg.current_version() == versions[1]
    assert _run(["models", "list"], settings) == 0
    out = capsys.readouterr().out
    assert f"* {versions[1]}" in out


def test_train_to_out_dir(tmp_path, settings, tiny_data):
    seq = write_sequences(tmp_path / "s.txt", tiny_data)
    out = tmp_path / "ckpt"
    assert _run(["train", "--sequences", str(seq), "--out", str(out), "--no-text", *_tiny_flags()], settings) == 0
    assert (out / "model.safetensors").is_file() and (out / "train_settings.json").is_file()
    assert not settings.registry_dir.exists() or not any(settings.registry_dir.iterdir())
    assert not (out / "transitions.safetensors").exists()  # off by default
    with_t = tmp_path / "ckpt-t"
    flags = ["--out", str(with_t), "--no-text", "--transitions", *_tiny_flags()]
    assert _run(["train", "--sequences", str(seq), *flags], settings) == 0
    fitted = json.loads((with_t / "metrics.json").read_text())["transitions"]
    assert json.loads((with_t / "train_settings.json").read_text())["transitions"] is True
    assert (with_t / "transitions.safetensors").is_file() == (fitted["weight"] > 0)


def test_evaluate_candidates_and_text_baseline(tmp_path, settings, tiny_checkpoint, capsys):
    # A whole new shop: 12 items the model has never seen, titles in its colour families.
    text = tmp_path / "t.tsv"
    text.write_text(
        "item_id\ttitle\n"
        + "".join(f"n{i}\t{('red', 'green', 'blue')[i % 3]} lipstick shade {100 + i}\n" for i in range(12))
    )
    seq = tmp_path / "s.txt"
    seq.write_text("".join(f"u{k} n{k % 3} n{k % 3 + 3} n{k % 3 + 6} n{k % 3 + 9}\n" for k in range(6)))
    base = [
        "evaluate",
        "--model",
        str(tiny_checkpoint),
        "--sequences",
        str(seq),
        "--item-text",
        str(text),
        "--json",
        "--baselines",
    ]
    assert _run(base, settings) == 0  # default: new items in the data -> rank among its catalog
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["candidates"] == "data" and rep["candidate_items"] == 12
    assert rep["items_added_from_text"] == 12 and "text_similarity" in rep
    assert "lift_over_text_similarity" in rep
    assert _run([*base, "--candidates", "all"], settings) == 0
    rep_all = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep_all["candidates"] == "all" and rep_all["candidate_items"] == 24 + 12
    # fewer competitors can only lift a target's rank
    for name in ("model_metrics", "text_similarity"):
        assert rep[name]["hr@10"] >= rep_all[name]["hr@10"]
        assert rep[name]["ndcg@20"] >= rep_all[name]["ndcg@20"]
    # the training shop itself: nothing new -> all
    assert (
        _run(
            [
                "evaluate",
                "--model",
                str(tiny_checkpoint),
                "--sequences",
                str(write_sequences(tmp_path / "old.txt", make_interactions(9))),
                "--json",
            ],
            settings,
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["candidates"] == "all"
    with pytest.raises(SystemExit):
        _run([*base, "--candidates", "some"], settings)


def test_augment_flags(tmp_path, settings, tiny_data, capsys):
    from streamrec.cli import main

    seq = write_sequences(tmp_path / "s.txt", tiny_data)
    bad = (("--augment", "crop,flip"), ("--augment-prob", "1.5"), ("--augment-mask", "x"), ("--contrastive", "-1"))
    for flag, value in bad:
        with pytest.raises(SystemExit) as exc:
            main(["train", "--sequences", str(seq), flag, value])
        assert exc.value.code != 0
        err = capsys.readouterr().err
        assert flag in err and value in err and "Traceback" not in err
    out = tmp_path / "ckpt"
    argv = ["--out", str(out), "--no-text", *_tiny_flags(), "--max-epochs", "1"]
    argv += ["--augment", "reorder, mask", "--augment-prob", "1", "--augment-reorder", "0.5"]
    assert _run(["train", "--sequences", str(seq), *argv], settings) == 0
    saved = json.loads((out / "train_settings.json").read_text())
    assert saved["augment"] == "reorder,mask" and saved["augment_prob"] == 1.0 and saved["augment_reorder"] == 0.5
    assert saved["augment_crop"] == 0.6 and saved["augment_mask"] == 0.3
    ft = tmp_path / "ft"
    argv = ["--model", str(out), "--sequences", str(seq), "--out", str(ft), "--max-epochs", "1", "--no-progress"]
    assert _run(["finetune", *argv, "--augment", "crop", "--contrastive", "0.1"], settings) == 0
    saved = json.loads((ft / "train_settings.json").read_text())
    assert saved["augment"] == "crop" and saved["contrastive"] == 0.1 and saved["contrastive_temp"] == 1.0


def test_adapt_fits_the_text_channel_to_a_new_shops_catalog(tmp_path, settings, tiny_checkpoint):
    """``streamrec adapt`` refits only the text channel (centre and directions) to the titles of
    the catalog given, for a model to serve a shop it never saw before its first event; the ids,
    the transformer and the vocabulary stay as trained."""
    import torch

    from streamrec.model.checkpoint import load_checkpoint
    from streamrec.model.text import TextEncoder

    shop = tmp_path / "shop.tsv"
    # more titles than the channel's 192 directions (a smaller catalog keeps the identity)
    titles = [
        f"{c} {m} {k} for the garden"
        for c in ("green", "red", "blue", "black", "white", "grey", "brown", "yellow")
        for m in ("steel", "oak", "cedar", "plastic", "clay")
        for k in ("hose", "rake", "pot", "bench", "lamp")
    ]
    rows = "".join(f"g{k}\t{t}\n" for k, t in enumerate(titles))
    shop.write_text("item_id\ttitle\n" + rows + "g999\t\n")  # the last one without a title
    out = tmp_path / "adapted"
    assert _run(["adapt", "--model", str(tiny_checkpoint), "--item-text", str(shop), "--out", str(out)], settings) == 0
    before, vocab0 = load_checkpoint(tiny_checkpoint)
    after, vocab1 = load_checkpoint(out)
    assert vocab1.ids == vocab0.ids  # no item added: the shop's items stay zero-shot at serving
    assert torch.equal(after.id_emb.weight, before.id_emb.weight)
    want = torch.from_numpy(TextEncoder(device="cpu").encode(titles)).float().mean(0)
    assert torch.allclose(after.text_mean, want, atol=1e-4)  # centred on the new shop's titles
    assert not torch.allclose(after.text_mean, before.text_mean, atol=1e-3)
    empty = tmp_path / "empty.tsv"
    empty.write_text("item_id\ttitle\ng1\t\n")
    with pytest.raises(ValueError, match=r"empty\.tsv: no item with a title"):
        _run(["adapt", "--model", str(tiny_checkpoint), "--item-text", str(empty), "--out", str(out)], settings)


def test_adapt_refuses_a_model_without_a_text_channel(tmp_path, settings):
    from streamrec.model.checkpoint import save_checkpoint
    from streamrec.model.train import TrainSettings, train

    data = make_interactions(20)
    res = train(
        data, config=TINY_CONFIG | {"hybrid": False}, settings=TrainSettings(max_epochs=1, device="cpu", progress=False)
    )
    plain = tmp_path / "plain"
    save_checkpoint(res.model, res.vocab, plain)
    shop = tmp_path / "shop.tsv"
    shop.write_text("item_id\ttitle\ng1\tgreen steel hose\ng2\tred oak bench\n")
    out = tmp_path / "adapted"
    with pytest.raises(ValueError, match=r"plain'? has no text channel to fit"):
        _run(["adapt", "--model", str(plain), "--item-text", str(shop), "--out", str(out)], settings)
    assert not out.exists()
