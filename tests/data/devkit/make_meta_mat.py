"""Writes meta.mat, a stand-in for the ILSVRC2012 devkit's data/meta.mat, with SciPy (an independent MATLAB v5
writer: the reader under test, requestflow.board.matfile, is not used here). Run once, in any venv with SciPy:

    python tests/data/devkit/make_meta_mat.py tests/data/devkit/meta.mat

Like the real file: a 1 x N struct array ``synsets`` with the fields ILSVRC2012_ID, WNID, words, gloss,
num_children, children, wordnet_height, num_train_images; the 1,000 leaves (num_children 0) carry IDs 1..1000 in an
order that is NOT the sorted WordNet ids' (here ID = (7 k + 3) mod 1000 + 1 for the k-th id in sorted order, the
formula tests/board/test_dataset_import.py uses to write the matching ground truth), followed by inner nodes (IDs from
1001, with children). The WordNet ids and names are made up (n10000000 + k, "class k"): class k is the k-th in
sorted order, as in ILSVRC2012's val.txt. Written compressed, as MATLAB's default -v7 format is.
"""

import sys
from pathlib import Path

import numpy as np
from scipy.io import savemat


def leaf_id(k: int) -> int:
    return (7 * k + 3) % 1000 + 1


def main(out: str) -> None:
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = []
    for k in range(1000):
        wnid, words = f"n{10000000 + k:08d}", f"class {k}, synonym of class {k}"
        rows.append((float(leaf_id(k)), wnid, words, f"gloss of {wnid}", 0.0, np.zeros((1, 0)), 0.0, 1300.0))
    by_id = sorted(range(len(rows)), key=lambda i: rows[i][0])
    rows = [rows[i] for i in by_id]  # the real file lists the synsets by ID
    for n in range(3):  # inner nodes, each with a few children (IDs)
        children = np.array([[1.0 + n, 2.0 + n, 3.0 + n]])
        rows.append((1001.0 + n, f"n9999999{n}", f"inner node {n}", "an inner node", 3.0, children, 1.0 + n, 0.0))
    synsets = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, value in zip(fields, row, strict=True):
            synsets[0, i][f] = value
    savemat(out, {"synsets": synsets}, do_compression=True, format="5")


def small(out: str) -> None:
    """small.mat, uncompressed: an int32 matrix, a two-row char array, a cell and a scalar (the reader's other
    paths)."""
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = 1.5, "x"
    savemat(out, {"a": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32), "s": np.array(["ab", "cd"]),
                  "c": cell, "x": 2.0}, do_compression=False, format="5")


if __name__ == "__main__":
    main(sys.argv[1])
    small(str(Path(sys.argv[1]).with_name("small.mat")))
