"""Every MobileNets-v1 configuration without real weights in the shared data runs on random weights (the
sweeps' ``weights = random``): the tflite backend exports each one's random weights with TensorFlow and measures
it, labelled random. One process, TensorFlow imported once (the farm's load test,
``tests/integration/test_faults_load.py``, sweeps two of them on every board)."""

from __future__ import annotations

from requestflow.board.catalogue import CONFIGS, get_model
from requestflow.board.resolve import local_choice
from requestflow.board.run_config import RunConfig
from requestflow.board.runner import run
from requestflow.board.schema import validate_document


def test_every_configuration_without_real_weights_runs_on_random_weights(data_dir):
    without = [c.id for c in CONFIGS if not local_choice(get_model(c.id), "tflite", None, None, data=data_dir)]
    assert len(without) == 9, without
    for model in without:
        document = run(RunConfig(model=model, backend="tflite", weights=["random"], repetitions=1, warmup=0,
                                 threads=1, allow_download=False, progress=False))
        validate_document(document)
        weights = document["context"]["weights"]
        assert (document["context"]["model"]["id"], weights["random"], weights["origin"]) == (model, True, "random")
