"""``requestflow dataset import / check / where``: ImageNet validation images into requestflow's data folder,
checked before anything is written, in one rename; bad input named in one line, nothing left behind.

The "official archive" here is a tar of the shared data's real validation JPEGs, named as in
``ILSVRC2012_img_val.tar`` (flat ``ILSVRC2012_val_NNNNNNNN.JPEG`` members); the ground truth is the shared data's
``val.txt`` (all 50,000 images) and ``synset_words.txt``, i.e. the caffe_ilsvrc12 auxiliary files.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from requestflow.board import matfile
from requestflow.board.dataset import load_dataset
from requestflow.board.imagenet_import import check_imported, import_validation_set
from requestflow.cli import main
from requestflow.errors import UserError
from tests.served import make_tar

COUNT = 12
DEVKIT = Path(__file__).parents[1] / "data" / "devkit"  # meta.mat written by SciPy (make_meta_mat.py), not by us


def leaf_id(k: int) -> int:
    """The ILSVRC2012_ID that tests/data/devkit/meta.mat gives the class k (make_meta_mat.py's formula)."""
    return (7 * k + 3) % 1000 + 1


@pytest.fixture
def devkit(tmp_path, data_dir) -> Path:
    """A devkit archive laid out as ILSVRC2012_devkit_t12.tar.gz: the stand-in meta.mat and a ground truth whose
    IDs give, through it, exactly the shared val.txt's classes (its 50,000 images)."""
    truth = sorted(line.split() for line in (data_dir / "imagenet" / "val.txt").read_text().splitlines() if line)
    ground_truth = "".join(f"{leaf_id(int(label))}\n" for _name, label in truth)
    return make_tar(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", {
        "ILSVRC2012_devkit_t12/data/meta.mat": (DEVKIT / "meta.mat").read_bytes(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": ground_truth.encode(),
        "ILSVRC2012_devkit_t12/readme.txt": b"ILSVRC2012 development kit\n"}, "w:gz")


@pytest.fixture(scope="module")
def first_images(val_dir) -> list[Path]:
    return sorted(val_dir.glob("ILSVRC2012_val_*.JPEG"))[:COUNT]


@pytest.fixture
def archive(tmp_path, first_images) -> Path:
    return make_tar(tmp_path / "ILSVRC2012_img_val.tar", {p.name: p.read_bytes() for p in first_images})


@pytest.fixture
def labels(data_dir) -> dict:
    return {"val_txt": data_dir / "imagenet" / "val.txt", "synset_words": data_dir / "imagenet" / "synset_words.txt"}


def leftovers(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir()) if data.is_dir() else []


class TestAnImport:
    def test_makes_the_runners_data_folder_in_one_step(self, tmp_path, archive, labels, first_images, data_dir):
        data = tmp_path / "data"
        imported = import_validation_set(archive, data, partial=True, log=lambda line: None, **labels)
        assert (imported.images, imported.complete) == (COUNT, False)
        assert leftovers(data) == ["imagenet"]
        assert sorted(p.name for p in (data / "imagenet").iterdir()) == ["SHA256SUMS", "synset_words.txt", "val",
                                                                            "val.txt"]
        assert [p.read_bytes() for p in sorted((data / "imagenet/val").iterdir())] == \
            [p.read_bytes() for p in first_images]
        dataset = load_dataset(data / "imagenet" / "val")  # what the runner reads, with its own checks
        reference = load_dataset(data_dir / "imagenet" / "val", limit=COUNT)
        assert (dataset.files, dataset.labels) == (reference.files, reference.labels)
        assert check_imported(data) == []

    def test_a_damaged_file_is_found_by_check(self, tmp_path, archive, labels):
        data = tmp_path / "data"
        import_validation_set(archive, data, partial=True, log=lambda line: None, **labels)
        victim = sorted((data / "imagenet/val").iterdir())[3]
        victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
        assert check_imported(data) == [f"val/{victim.name}"]

    def test_a_folder_of_jpegs_and_the_caffe_labels_archive(self, tmp_path, first_images, labels):
        folder = tmp_path / "jpegs"
        folder.mkdir()
        for image in first_images[:4]:
            (folder / image.name).write_bytes(image.read_bytes())
        aux = tmp_path / "caffe_ilsvrc12.tar.gz"
        with tarfile.open(aux, "w:gz") as tar:
            tar.add(labels["val_txt"], arcname="val.txt")
            tar.add(labels["synset_words"], arcname="synset_words.txt")
        imported = import_validation_set(folder, tmp_path / "data", labels=aux, partial=True, log=lambda line: None)
        assert imported.images == 4

    def test_the_official_devkit_gives_the_same_classes_as_val_txt(self, tmp_path, archive, devkit, data_dir):
        data = tmp_path / "data"
        import_validation_set(archive, data, devkit=devkit, partial=True, log=lambda line: None)
        assert sorted(p.name for p in (data / "imagenet").iterdir()) == ["SHA256SUMS", "synset_words.txt", "val",
                                                                            "val.txt"]
        assert (data / "imagenet/val.txt").read_text() == (data_dir / "imagenet/val.txt").read_text()
        words = (data / "imagenet/synset_words.txt").read_text().splitlines()
        assert (len(words), words[0], words[999]) == (1000, "n10000000 class 0, synonym of class 0",
                                                      "n10000999 class 999, synonym of class 999")
        assert load_dataset(data / "imagenet" / "val").labels == load_dataset(data_dir / "imagenet" / "val",
                                                                              limit=COUNT).labels

    def test_replace_swaps_the_whole_folder(self, tmp_path, archive, labels, first_images):
        data = tmp_path / "data"
        import_validation_set(archive, data, partial=True, log=lambda line: None, **labels)
        smaller = make_tar(tmp_path / "smaller.tar", {p.name: p.read_bytes() for p in first_images[:2]})
        import_validation_set(smaller, data, partial=True, replace=True, log=lambda line: None, **labels)
        assert len(list((data / "imagenet/val").iterdir())) == 2
        assert leftovers(data) == ["imagenet"]


class TestRefusals:
    """Each refused with one clear error, the data folder as it was."""

    @pytest.mark.parametrize("members, message", [
        ({"ILSVRC2012_val_00000001.JPEG": b"\xff\xd8\xff" + b"x" * 10, "notes.txt": b"hello"},
         r"'notes\.txt' is not an ILSVRC2012 validation image name"),
        ({"ILSVRC2012_val_00050001.JPEG": b"\xff\xd8\xff"}, r"'ILSVRC2012_val_00050001\.JPEG' is not an ILSVRC2012"),
        ({"ILSVRC2012_val_00000001.JPEG": b"<html>not found</html>"},
         r"ILSVRC2012_val_00000001\.JPEG is not a JPEG file"),
        ({"a/ILSVRC2012_val_00000001.JPEG": b"\xff\xd8\xff", "b/ILSVRC2012_val_00000001.JPEG": b"\xff\xd8\xff"},
         r"ILSVRC2012_val_00000001\.JPEG appears 2 times"),
        ({}, "no ILSVRC2012 validation images in it"),
    ])
    def test_bad_archives(self, tmp_path, labels, members, message):
        data = tmp_path / "data"
        with pytest.raises(UserError, match=message):
            import_validation_set(make_tar(tmp_path / "bad.tar", members), data, partial=True,
                                  log=lambda line: None, **labels)
        assert leftovers(data) == []

    def test_a_subset_needs_partial(self, tmp_path, archive, labels):
        with pytest.raises(UserError, match=r"12 images; the ILSVRC2012 validation set has 50,000 \(pass --partial"):
            import_validation_set(archive, tmp_path / "data", log=lambda line: None, **labels)
        assert leftovers(tmp_path / "data") == []

    def test_an_image_without_a_label(self, tmp_path, archive, labels, first_images):
        short = tmp_path / "val.txt"
        lines = labels["val_txt"].read_text().splitlines()
        unlabelled = first_images[3].name
        short.write_text("\n".join(line for line in lines if not line.startswith(unlabelled)) + "\n")
        with pytest.raises(UserError, match=rf"{unlabelled} has no label in"):
            import_validation_set(archive, tmp_path / "data", partial=True, log=lambda line: None,
                                  val_txt=short, synset_words=labels["synset_words"])

    def test_a_complete_ground_truth_must_have_fifty_images_per_class(self, tmp_path, archive, labels):
        lines = labels["val_txt"].read_text().splitlines()
        name, label = lines[0].split()
        changed = tmp_path / "val.txt"
        changed.write_text("\n".join([f"{name} {(int(label) + 1) % 1000}", *lines[1:]]) + "\n")
        with pytest.raises(UserError, match=r"has (49|51) images; ILSVRC2012's validation set has 50 per class"):
            import_validation_set(archive, tmp_path / "data", partial=True, log=lambda line: None,
                                  val_txt=changed, synset_words=labels["synset_words"])

    @pytest.mark.parametrize("text, message", [
        ("ILSVRC2012_val_00000001.JPEG 1000\n", r"val\.txt:1: expected 'FILE CLASS' with CLASS in 0\.\.999"),
        ("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000001.JPEG 2\n", r"val\.txt:2: .* labelled twice"),
    ])
    def test_bad_ground_truth(self, tmp_path, archive, labels, text, message):
        bad = tmp_path / "val.txt"
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            import_validation_set(archive, tmp_path / "data", partial=True, log=lambda line: None, val_txt=bad,
                                  synset_words=labels["synset_words"])

    def test_class_names_out_of_order(self, tmp_path, archive, labels):
        lines = labels["synset_words"].read_text().splitlines()
        swapped = tmp_path / "synset_words.txt"
        swapped.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
        with pytest.raises(UserError, match="WordNet ids are not distinct and sorted"):
            import_validation_set(archive, tmp_path / "data", partial=True, log=lambda line: None,
                                  val_txt=labels["val_txt"], synset_words=swapped)

    def test_an_earlier_import_is_kept_unless_replace(self, tmp_path, archive, labels):
        data = tmp_path / "data"
        import_validation_set(archive, data, partial=True, log=lambda line: None, **labels)
        with pytest.raises(UserError, match="exists already: pass --replace"):
            import_validation_set(archive, data, partial=True, log=lambda line: None, **labels)
        assert leftovers(data) == ["imagenet"] and check_imported(data) == []


class TestADamagedDevkit:
    def test_a_ground_truth_line_that_is_no_id_is_named(self, tmp_path, archive):
        bad = make_tar(tmp_path / "devkit.tar.gz", {
            "d/data/meta.mat": (DEVKIT / "meta.mat").read_bytes(),
            "d/data/ILSVRC2012_validation_ground_truth.txt": b"5\n1001\n"}, "w:gz")
        with pytest.raises(UserError, match=r"ILSVRC2012_validation_ground_truth\.txt:2: expected an ILSVRC2012_ID"):
            import_validation_set(archive, tmp_path / "data", devkit=bad, partial=True, log=lambda line: None)
        assert leftovers(tmp_path / "data") == []

    def test_a_devkit_without_meta_mat_or_with_another_file_is_named(self, tmp_path, archive):
        missing = make_tar(tmp_path / "a.tar.gz", {"d/data/ILSVRC2012_validation_ground_truth.txt": b"1\n"}, "w:gz")
        with pytest.raises(UserError, match=r"no meta\.mat in it \(expected the ILSVRC2012 devkit\)"):
            import_validation_set(archive, tmp_path / "data", devkit=missing, partial=True, log=lambda line: None)
        other = make_tar(tmp_path / "b.tar.gz", {"d/data/meta.mat": (DEVKIT / "small.mat").read_bytes(),
                                                 "d/data/ILSVRC2012_validation_ground_truth.txt": b"1\n"}, "w:gz")
        with pytest.raises(UserError, match="no struct array 'synsets'"):
            import_validation_set(archive, tmp_path / "data", devkit=other, partial=True, log=lambda line: None)


class TestTheMatFileReader:
    """requestflow.board.matfile against files SciPy wrote (tests/data/devkit/make_meta_mat.py)."""

    def test_a_compressed_struct_array_as_the_devkit_has(self):
        synsets = matfile.read(DEVKIT / "meta.mat")["synsets"]
        assert len(synsets) == 1003
        assert synsets[0] == {"ILSVRC2012_ID": 1.0, "WNID": "n10000571", "words": "class 571, synonym of class 571",
                              "gloss": "gloss of n10000571", "num_children": 0.0, "children": [],
                              "wordnet_height": 0.0, "num_train_images": 1300.0}
        assert synsets[-1]["children"] == [3.0, 4.0, 5.0]

    def test_integers_char_rows_cells_and_scalars_in_matlab_order(self):
        assert matfile.read(DEVKIT / "small.mat") == {"a": [1, 4, 2, 5, 3, 6], "s": ["ab", "cd"], "c": [1.5, "x"],
                                                       "x": 2.0}

    @pytest.mark.parametrize("damage, message", [
        (lambda b: b[:100], "not a MATLAB 5 MAT-file"),
        (lambda b: b[:126] + b"XX" + b[128:], "no endian indicator"),
        (lambda b: b[:200], "truncated data element"),
        (lambda b: b[:136] + bytes(64) + b[200:], "compressed element is damaged"),
    ])
    def test_damage_is_one_clear_error(self, tmp_path, damage, message):
        bad = tmp_path / "bad.mat"
        bad.write_bytes(damage((DEVKIT / "meta.mat").read_bytes()))
        with pytest.raises(UserError, match=message):
            matfile.read(bad)


class TestTheCommand:
    def test_import_where_and_check(self, tmp_path, archive, labels, monkeypatch, capsys):
        monkeypatch.delenv("REQUESTFLOW_DATA", raising=False)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert main(["dataset", "import", str(archive), "--val-txt", str(labels["val_txt"]), "--synset-words",
                     str(labels["synset_words"]), "--partial"]) == 0
        out = capsys.readouterr().out
        assert f"imported 12 validation image(s) of 12 class(es) in {tmp_path / 'xdg/requestflow/imagenet'}" in out
        monkeypatch.chdir(tmp_path)  # no shared/data above it: requestflow's own folder is the data folder
        assert main(["dataset", "check"]) == 0
        assert main(["dataset", "where", "--data", str(tmp_path / "xdg/requestflow")]) == 0
        assert "12 validation image(s)" in capsys.readouterr().out

    def test_bad_input_is_one_line(self, tmp_path, capsys):
        assert main(["dataset", "import", str(tmp_path / "missing.tar"), "--data", str(tmp_path / "d"),
                     "--val-txt", "x", "--synset-words", "y"]) == 2
        assert capsys.readouterr().err == "requestflow: error: x does not exist\n"
        assert main(["dataset", "import", str(tmp_path), "--data", str(tmp_path / "d")]) == 2
        assert "the ground truth is needed" in capsys.readouterr().err
