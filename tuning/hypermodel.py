"""`ESNetHyperModel`: a KerasTuner HyperModel over the whole ESNet architecture.

`build(hp)` samples an `ESNetConfig` (stem, stages, widths, CBAM on/off and its ratio and
spatial kernel, dense head, dropout, BN momentum) plus the learning rate and loss from a
`SearchSpace`, and returns the compiled model of `esnet_tf.model.build_esnet`. The input
normalisation is fitted once on the training split and handed in, never refitted per trial.
Training itself stays in the tuner (no `fit` override).

    import keras_tuner
    from esnet_tf.tuning import ESNetHyperModel, SearchSpace
    hypermodel = ESNetHyperModel(SearchSpace.load(), normalization=stats)
    model = hypermodel.build(keras_tuner.HyperParameters())
"""
from __future__ import annotations

import keras_tuner

from esnet_tf.model import ESNetConfig, build_esnet, compile_esnet
from esnet_tf.tuning.search_space import SearchSpace

#: the metric the tuner optimises: MAE (eV/atom) of the validation split, as logged by Keras
OBJECTIVE = "val_mae"


class ESNetHyperModel(keras_tuner.HyperModel):
    """Samples ESNet architectures and training choices from `space`.

    `normalization`: `esnet_tf.model.dos_statistics` of the training split (per-channel mean
    and std of dos_up / dos_down, states/eV/atom), stored in every built model.
    """

    def __init__(self, space: SearchSpace | None = None, *, normalization: dict | None = None,
                 name: str = "esnet") -> None:
        super().__init__(name=name, tunable=True)
        self.space = space or SearchSpace.load()
        self.normalization = normalization

    def config(self, hp: keras_tuner.HyperParameters) -> tuple[ESNetConfig, dict]:
        """(ESNetConfig, {'learning_rate', 'loss'}) of a hyperparameter set, without building a model."""
        return self.space.sample(hp)

    def build(self, hp: keras_tuner.HyperParameters):
        """A compiled ESNet `keras.Model` for `hp` (inputs dos_up, dos_down, composition; eV/atom out)."""
        config, training = self.space.sample(hp)
        model = build_esnet(config, normalization=self.normalization, name="esnet_tuned")
        compile_esnet(model, training["learning_rate"], training["loss"])
        return model
