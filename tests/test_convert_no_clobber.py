"""`python -m longctx.convert SRC DST` never clobbers: a non-empty DST only with --overwrite, never
SRC itself, and DST appears (or is replaced) only once the new checkpoint is whole."""

from pathlib import Path

import pytest
import transformers
from transformers import AutoModelForCausalLM

from longctx import convert

SOURCE = Path(__file__).parent / "fixtures" / "transfo_xl_4352"


def old_checkpoint(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"old": true}')
    (folder / "notes.txt").write_text("the user's work")
    return folder


def test_a_non_empty_destination_is_refused_and_kept(tmp_path, capsys):
    destination = old_checkpoint(tmp_path / "out")
    with pytest.raises(ValueError, match="is not empty.*--overwrite"):
        convert.convert_checkpoint(SOURCE, destination)
    with pytest.raises(SystemExit) as stop:
        convert.main([str(SOURCE), str(destination)])
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (destination / "config.json").read_text() == '{"old": true}'


def test_overwrite_replaces_the_whole_folder(tmp_path):
    destination = old_checkpoint(tmp_path / "out")
    convert.main([str(SOURCE), str(destination), "--overwrite"])
    assert not (destination / "notes.txt").exists()  # no file of the old folder is left behind
    assert AutoModelForCausalLM.from_pretrained(destination).config.model_type == \
        "longctx-transfo-xl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_an_empty_destination_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    convert.convert_checkpoint(SOURCE, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "parent"])
def test_the_source_is_never_the_destination(tmp_path, where):
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text((SOURCE / "config.json").read_text())
    destination = source / ".." / "src" if where == "same" else tmp_path
    with pytest.raises(ValueError, match="overwrite its own input"):
        convert.convert_checkpoint(source, destination, overwrite=True)
    assert (source / "config.json").read_text() == (SOURCE / "config.json").read_text()


def interrupted_save(self, folder, *args, **kwargs):
    Path(folder, "config.json").write_text("")  # a half-written checkpoint, then a Ctrl-C
    raise KeyboardInterrupt


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_conversion_leaves_the_old_folder_or_none(tmp_path, monkeypatch,
                                                                 existing):
    destination = tmp_path / "out"
    if existing:
        old_checkpoint(destination)
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_checkpoint(SOURCE, destination, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])
    if existing:
        assert (destination / "config.json").read_text() == '{"old": true}'
        assert (destination / "notes.txt").is_file()
