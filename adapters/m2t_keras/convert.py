"""``convert_momentum_bn``: clone a Keras model with every BatchNormalization replaced by momentum BN.

Also the correspondence between a model and its converted clone (:func:`parameter_pairs`), which the
teacher EMA runs over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras

# Keras exports no public name for "a Functional model"; clone_model only works on these and on
# Sequential models, and a clear TypeError beats clone_model's error about its own arguments.
from keras.src.models.functional import Functional

from m2t_keras.layers import MomentumBatchNormalization

__all__ = ["convert_momentum_bn", "parameter_pairs"]

_LAYER_KWARGS = ("num_views", "alpha_start", "alpha_end", "total_steps", "correction")
_NORMALIZATION = (keras.layers.BatchNormalization, MomentumBatchNormalization)


def _check_graph_model(model: Any, what: str = "model") -> None:
    if not isinstance(model, (keras.Sequential, Functional)):
        raise TypeError(
            f"{what} must be a Functional or Sequential keras.Model (its layer graph is cloned), "
            f"got {type(model).__name__}; build the backbone with keras.Input(...) or keras.Sequential"
        )


def leaf_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Layers of a Functional/Sequential model in graph order, nested graph models expanded.

    Args:
        model: A Functional or Sequential model.

    Yields:
        Every layer that is not itself a Functional/Sequential model, in ``model.layers`` order.
    """
    for layer in model.layers:
        if isinstance(layer, (keras.Sequential, Functional)):
            yield from leaf_layers(layer)
        else:
            yield layer


def _sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    # Keras 3 has no public sublayer iterator; _flatten_layers is what Layer.weights itself uses.
    return list(layer._flatten_layers(include_self=False))


def _clone_replacing_bn(
    model: keras.Model, make_layer: Callable[[keras.layers.BatchNormalization], keras.layers.Layer]
) -> keras.Model:
    """Clone ``model``, building each BatchNormalization's replacement with ``make_layer``, copy weights."""
    _check_graph_model(model)

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.BatchNormalization):
            return make_layer(layer)
        return layer.__class__.from_config(layer.get_config())

    cloned = keras.models.clone_model(model, clone_function=clone, recursive=True)
    sources, targets = list(leaf_layers(model)), list(leaf_layers(cloned))
    if len(sources) != len(targets):  # pragma: no cover - clone_model preserves the graph
        raise RuntimeError(f"cloning changed the number of layers: {len(sources)} -> {len(targets)}")
    for src, dst in zip(sources, targets, strict=True):
        hidden = [s.name for s in _sublayers(dst) if isinstance(s, keras.layers.BatchNormalization)]
        if hidden:
            raise ValueError(
                f"layer {src.name!r} ({type(src).__name__}) holds BatchNormalization layers {hidden} "
                "inside its own code, where cloning cannot replace them; build the model from "
                "Functional/Sequential graphs of standard layers, or use MomentumBatchNormalization "
                "in that layer directly"
            )
        _copy_weights(src, dst)
    return cloned


def _copy_of(variable: Any) -> Any:
    # A host copy: assigning the source's own array would make both variables share one buffer on
    # JAX, and a jitted train step that donates its state cannot donate one buffer twice.
    return keras.ops.convert_to_numpy(variable.value)


def _copy_weights(src: keras.layers.Layer, dst: keras.layers.Layer) -> None:
    if isinstance(src, keras.layers.BatchNormalization):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if s is not None and d is not None:
                d.assign(_copy_of(s))
        return
    if len(src.weights) != len(dst.weights):  # pragma: no cover - a clone has the same variables
        raise RuntimeError(
            f"layer {src.name!r}: {len(src.weights)} weights but its clone has {len(dst.weights)}"
        )
    for s, d in zip(src.weights, dst.weights, strict=True):
        d.assign(_copy_of(s))


def convert_momentum_bn(model: keras.Model, **layer_kwargs: Any) -> keras.Model:
    """Clone a Functional or Sequential model with every BatchNormalization replaced.

    Each ``keras.layers.BatchNormalization`` (also inside nested Functional/Sequential models)
    becomes a :class:`~m2t_keras.MomentumBatchNormalization` with the same name, ``axis``,
    ``epsilon``, ``center``, ``scale``, regularizers, constraints and dtype policy; its ``gamma``,
    ``beta``, ``moving_mean`` and ``moving_variance`` are copied and its counters start at 0. Every
    other layer is cloned from its config with its weights copied. The input model is unchanged.

    Args:
        model: A Functional or Sequential ``keras.Model``.
        **layer_kwargs: Momentum-BN arguments for every replaced layer: ``num_views``,
            ``alpha_start``, ``alpha_end``, ``total_steps``, ``correction`` (defaults as in
            :class:`~m2t_keras.MomentumBatchNormalization`).

    Returns:
        A new model of the same class (Functional or Sequential) and graph.

    Raises:
        TypeError: ``model`` is a subclassed model, or an unknown keyword is given.
        ValueError: bad momentum-BN arguments; a BatchNormalization with ``renorm=True``; or a
            custom layer that creates BatchNormalization layers in its own code (cloning cannot
            reach those, and a teacher silently left with batch statistics would be wrong).
    """
    _check_graph_model(model)
    unknown = sorted(set(layer_kwargs) - set(_LAYER_KWARGS))
    if unknown:
        raise TypeError(
            f"convert_momentum_bn got unexpected keyword arguments {unknown}; allowed: {_LAYER_KWARGS}"
        )
    MomentumBatchNormalization(**layer_kwargs)  # validate once, before cloning anything

    def make_layer(bn: keras.layers.BatchNormalization) -> MomentumBatchNormalization:
        if bn.renorm:
            raise ValueError(
                f"BatchNormalization {bn.name!r} uses renorm=True, which has no momentum-BN form"
            )
        return MomentumBatchNormalization(
            axis=bn.axis,
            epsilon=bn.epsilon,
            center=bn.center,
            scale=bn.scale,
            beta_regularizer=bn.beta_regularizer,
            gamma_regularizer=bn.gamma_regularizer,
            beta_constraint=bn.beta_constraint,
            gamma_constraint=bn.gamma_constraint,
            name=bn.name,
            dtype=bn.dtype_policy,
            trainable=bn.trainable,
            **layer_kwargs,
        )

    return _clone_replacing_bn(model, make_layer)


def parameter_pairs(source: keras.Model, converted: keras.Model) -> list[tuple[Any, Any]]:
    """``(converted_variable, source_variable)`` for every parameter the two models share.

    The pairs the teacher EMA runs over: all floating weights of corresponding layers, with
    BatchNormalization / momentum-BN contributing ``gamma`` and ``beta`` only — never their
    statistics or counters, which each model keeps for itself.

    Args:
        source: The student side (a Functional/Sequential model).
        converted: Its clone, e.g. from :func:`convert_momentum_bn`.

    Returns:
        List of ``(converted_variable, source_variable)`` pairs with equal shapes.

    Raises:
        ValueError: the models do not have corresponding layers and shapes.
    """
    _check_graph_model(source, "source")
    _check_graph_model(converted, "converted")
    sources, targets = list(leaf_layers(source)), list(leaf_layers(converted))
    if len(sources) != len(targets):
        raise ValueError(f"the models have {len(sources)} and {len(targets)} layers; they must correspond")
    pairs = []
    for src, dst in zip(sources, targets, strict=True):
        if isinstance(src, _NORMALIZATION) or isinstance(dst, _NORMALIZATION):
            if not (isinstance(src, _NORMALIZATION) and isinstance(dst, _NORMALIZATION)):
                raise ValueError(f"layer {src.name!r} is a normalization layer in only one of the models")
            names = [n for n in ("gamma", "beta") if getattr(src, n, None) is not None]
            layer_pairs = [(getattr(dst, n), getattr(src, n)) for n in names]
        else:
            if len(src.weights) != len(dst.weights):
                raise ValueError(f"layer {src.name!r} has {len(src.weights)} weights vs {len(dst.weights)}")
            layer_pairs = list(zip(dst.weights, src.weights, strict=True))
        for t, s in layer_pairs:
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError(f"shape mismatch for {s.path!r}: {tuple(t.shape)} vs {tuple(s.shape)}")
            if keras.backend.is_float_dtype(s.dtype):
                pairs.append((t, s))
    return pairs
