"""The ImageNet layout, Inception preprocessing and its cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from requestflow.board.dataset import load_dataset, preprocess_image
from requestflow.board.image_stream import preprocess_dataset
from requestflow.errors import UserError


def make_dataset(folder, images: dict[str, Image.Image | bytes], labels: dict[str, int] | None = None):
    val = folder / "val"
    val.mkdir(parents=True)
    for name, image in images.items():
        if isinstance(image, bytes):
            (val / name).write_bytes(image)
        else:
            image.save(val / name, format="JPEG" if image.mode in ("RGB", "L", "CMYK") else "PNG")
    labels = labels if labels is not None else {name: i for i, name in enumerate(images)}
    (folder / "val.txt").write_text("".join(f"{name} {label}\n" for name, label in labels.items()))
    (folder / "synset_words.txt").write_text("".join(f"n{i:08d} class {i}, synonym\n" for i in range(1000)))
    return val


def gradient(mode: str, size=(227, 227)) -> Image.Image:
    x = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    return Image.fromarray(x, "RGB").convert(mode)


class TestPreprocessing:
    def test_crops_87_5_percent_centrally_then_resizes_bilinearly(self, tmp_path):
        image = gradient("RGB", (227, 200))
        image.save(tmp_path / "a.png")
        got = preprocess_image(tmp_path / "a.png", 128)
        # 227 -> offset int((227 - 198.625) / 2) = 14; 200 -> offset int(12.5) = 12
        expected = np.asarray(image.crop((14, 12, 213, 188)).resize((128, 128), Image.BILINEAR))
        assert got.shape == (128, 128, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)

    @pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
    def test_converts_other_colour_modes_to_rgb(self, tmp_path, mode):
        path = tmp_path / f"x.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
        gradient(mode).save(path)
        assert preprocess_image(path, 160).shape == (160, 160, 3)


class TestTheDataset:
    def test_takes_the_first_n_images_in_name_order_with_their_labels(self, tmp_path):
        names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (7, 3, 5)]
        val = make_dataset(tmp_path, {n: gradient("RGB") for n in names}, {n: i for i, n in enumerate(names)})
        dataset = load_dataset(val, limit=2)
        assert dataset.files == ("ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000005.JPEG")
        assert dataset.labels == (1, 2)
        assert dataset.class_names[3] == "class 3, synonym"

    def test_file_list_hash_changes_with_the_selection(self, tmp_path):
        names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 4)]
        val = make_dataset(tmp_path, {n: gradient("RGB") for n in names})
        assert load_dataset(val, limit=2).file_list_sha256 != load_dataset(val).file_list_sha256
        assert load_dataset(val).file_list_sha256 == load_dataset(val).file_list_sha256

    def test_an_unreadable_image_is_counted_and_named_and_the_rest_go_on(self, tmp_path):
        names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 4)]
        images = {n: gradient("RGB") for n in names}
        images[names[1]] = b"not a jpeg at all"
        dataset = load_dataset(make_dataset(tmp_path, images))
        prepared = preprocess_dataset(dataset, 128, progress=False)
        assert prepared.ok == [0, 2]
        assert prepared.pixels.shape == (2, 128, 128, 3)
        assert [f["file"] for f in prepared.failed] == [names[1]]
        assert "UnidentifiedImageError" in prepared.failed[0]["error"]

    def test_preprocessed_tensors_are_cached_and_reused(self, tmp_path):
        names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 3)]
        dataset = load_dataset(make_dataset(tmp_path, {n: gradient("RGB") for n in names}))
        first = preprocess_dataset(dataset, 128, progress=False)
        second = preprocess_dataset(dataset, 128, progress=False)
        assert not first.cached and second.cached
        np.testing.assert_array_equal(np.asarray(first.pixels), np.asarray(second.pixels))
        assert not preprocess_dataset(dataset, 160, progress=False).cached  # resolution is part of the key


class TestBadDatasets:
    def test_a_missing_folder(self, tmp_path):
        with pytest.raises(UserError, match=r"image folder .*nope does not exist"):
            load_dataset(tmp_path / "nope")

    def test_an_image_missing_from_val_txt(self, tmp_path):
        names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 3)]
        val = make_dataset(tmp_path, {n: gradient("RGB") for n in names}, {names[0]: 1})
        with pytest.raises(UserError, match=f"image {names[1]} is missing from .*val.txt"):
            load_dataset(val)

    def test_limit_zero(self, tmp_path):
        with pytest.raises(UserError, match="--limit must be at least 1, got 0"):
            load_dataset(tmp_path, limit=0)

    def test_a_malformed_val_txt_line(self, tmp_path):
        val = make_dataset(tmp_path, {"ILSVRC2012_val_00000001.JPEG": gradient("RGB")},
                           {"ILSVRC2012_val_00000001.JPEG": 1000})
        with pytest.raises(UserError, match=r"val.txt:1: expected 'FILE CLASS' with CLASS in 0..999"):
            load_dataset(val)
