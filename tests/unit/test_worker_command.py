"""`streamrec worker` refuses to start without a model, with a message that says what to do."""

from __future__ import annotations

from streamrec.cli import main


def test_worker_without_model_exits_with_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STREAMREC_BOOTSTRAP_SERVERS", raising=False)
    code = main(["--data-dir", str(tmp_path), "worker"])
    err = capsys.readouterr().err
    assert code == 2
    assert "streamrec train" in err and "Traceback" not in err


def test_worker_with_missing_checkpoint_dir_is_refused(tmp_path, capsys):
    code = main(["--data-dir", str(tmp_path), "worker", "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err
