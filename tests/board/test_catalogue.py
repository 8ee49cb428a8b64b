from __future__ import annotations

import pytest

from requestflow.board import catalogue
from requestflow.board.catalogue import CONFIGS, PUBLISHED, get_model
from requestflow.errors import UserError


class TestTheCatalogue:
    def test_has_the_sixteen_configs_with_their_ids(self):
        assert len(CONFIGS) == 16
        assert {c.id for c in CONFIGS} == {f"mobilenet-v1-{w}-{r}" for w in ("0.25", "0.5", "0.75", "1.0")
                                            for r in (128, 160, 192, 224)}

    @pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.id)
    def test_macs_agree_with_tf_slims_table(self, config):
        published_million = PUBLISHED[(config.width, config.resolution)][0]
        if config.id == "mobilenet-v1-0.25-192":
            # The table's 34 M is inconsistent with its own row: MACs scale with resolution squared, and
            # 41 M x (192/224)^2 = 30.1 M; we compute 30.2 M.
            published_million = 41 * (192 / 224) ** 2
        assert config.macs / 1e6 == pytest.approx(published_million, rel=0.03, abs=0.5)  # table rounds to 1 M

    @pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.id)
    def test_parameters_agree_with_tf_slims_table(self, config):
        assert config.params / 1e6 == pytest.approx(PUBLISHED[(config.width, config.resolution)][1], rel=0.015)

    def test_a_network_has_27_weighted_layers_and_ends_at_7x7_for_224(self):
        layers = get_model("mobilenet-v1-1.0-224").layers()
        assert len(layers) == 28  # conv0, 13 x (dw, pw), logits
        assert layers[-2].out_size == 7 and layers[-1].weights_shape == (1, 1, 1024, 1001)

    def test_width_scales_every_channel_count(self):
        layers = get_model("mobilenet-v1-0.25-128").layers(classes=1000)
        assert layers[0].weights_shape == (3, 3, 3, 8)
        assert layers[-1].weights_shape == (1, 1, 256, 1000)


class TestUnknownModelIds:
    def test_suggest_the_nearest_known_id(self):
        with pytest.raises(UserError, match=r"unknown model id 'mobilenet-v1-0.25-12'; did you mean "
                                            r"mobilenet-v1-0.25-1(28|92)"):
            get_model("mobilenet-v1-0.25-12")

    def test_list_the_known_ids_when_nothing_is_near(self):
        with pytest.raises(UserError, match="known: mobilenet-v1-0.25-128"):
            get_model("resnet50")

    def test_vocabulary_is_the_shared_one(self):
        assert catalogue.PRECISIONS == ("fp32", "uint8", "int8")
        assert catalogue.MODES == ("performance", "accuracy")
