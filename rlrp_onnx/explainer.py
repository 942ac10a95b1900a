"""The Python API for running explanations: ``Explainer(model).explain(images)``."""

from __future__ import annotations

import gc
import os
from typing import NamedTuple, Sequence

import numpy as np

import onnx

from .compiler import compile_model
from .contract import FORMS, LOGITS_OUTPUT, META_EXPLAINED_OUTPUT, META_RULE, META_VERSION
from .errors import RlrpError, first_line
from .loading import load_model, read_metadata, serialized
from .methods import RLRP, Options
from .runtime import (check_device, check_image_shape, class_count, create_session, expects_cuda, fixed_batch,
                      image_input, run_explainer, target_classes)


# The forms a source model is compiled in for R-LRP on ONNX Runtime's CPU provider, where not chosen: the large
# 3x3 adjoints by Winograd tiles, 10-12% faster for VGG16/19 (README, Speed), no change where no layer is large.
# Not for the classical rules: a NaN of theirs (lrp0's 0/0) would spread over a whole tile
CPU_FORMS = {"adjoints": "winograd"}


def explainer_model(model, output_name: str | None = None, forms: dict[str, str | None] | None = None,
                    input_shapes: dict[str, list[int]] | None = None, default_forms: dict[str, str] | None = None,
                    **method):
    """``(model, its metadata, compiled now)``: an already compiled model as given (a compiled file by
    its path, of which only the metadata is read), else its compiled form in memory; ``method`` holds
    ``compile_model``'s rule keywords, ``forms`` its form keywords (``contract.FORMS``; None: for a
    source model the one in ``default_forms``, else ``compile_model``'s default; for a compiled one,
    whichever it has), ``input_shapes`` its sizes for inputs with dynamic ones."""
    chosen_forms = {keyword: value for keyword, value in (forms or {}).items() if value is not None}
    meta = read_metadata(model) if isinstance(model, (str, os.PathLike)) else None
    if meta and META_VERSION in meta:
        proto, label = model, str(model)
    else:
        proto, label = load_model(model)
        meta = {p.key: p.value for p in proto.metadata_props}
    if META_VERSION not in meta:
        compiled = compile_model(proto, output_name=output_name, label=label, input_shapes=input_shapes,
                                 in_place=proto is not model, **{**(default_forms or {}), **chosen_forms}, **method)
        return compiled, {p.key: p.value for p in compiled.metadata_props}, True
    missing = [key for key in (META_RULE, META_EXPLAINED_OUTPUT) if key not in meta]
    if missing:
        raise RlrpError(f"{label}: a compiled model without its {missing[0]!r} metadata, which the compiler "
                        "writes; compile the source model again")
    if output_name is not None and output_name != meta[META_EXPLAINED_OUTPUT]:
        raise RlrpError(f"{label} is already compiled to explain output '{meta[META_EXPLAINED_OUTPUT]}'; compile "
                        f"the source model to explain '{output_name}'")
    chosen = method.get("composite") or method.get("rule")
    if chosen and chosen != meta[META_RULE]:
        raise RlrpError(f"{label} is already compiled with '{meta[META_RULE]}'; compile the source model "
                        f"to explain with '{chosen}'")
    if method.get("options") is not None and getattr(method["options"], "given", True):
        raise RlrpError(f"{label} is already compiled with its rule's parameters; rule parameters apply "
                        "to a source model")
    if input_shapes:
        raise RlrpError(f"{label} is already compiled for its declared input sizes; input shapes apply "
                        "to a source model")
    for keyword, value in chosen_forms.items():
        key, choices = FORMS[keyword]
        recorded = meta.get(key, choices[0])
        if value != recorded:
            raise RlrpError(f"{label} is already compiled with {keyword} '{recorded}'; compile the source model "
                            f"for {keyword} '{value}'")
    return proto, meta, False


def check_count(value, name: str, unit: str) -> None:
    """RlrpError unless ``value`` is a whole number (not a bool) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RlrpError(f"{name} must be a whole number of {unit}, at least 1; got {value!r}")


def check_request(targets, top_k, names: tuple[str, str] = ("targets", "top_k")) -> None:
    """RlrpError unless the classes asked for are targets, ``top_k`` (a whole number, at least 1) or
    neither: what ``Explainer.explain`` checks before it runs, for callers that check before loading
    (and name the two in their own terms, ``names``)."""
    if top_k is not None and targets is not None:
        raise RlrpError(f"give either {names[0]} or {names[1]}, not both")
    if top_k is not None:
        check_count(top_k, names[1], "classes")


def _check_numbers(images: np.ndarray) -> None:
    if images.dtype.kind not in "biuf":
        raise RlrpError(f"images must be an array of numbers, got dtype {images.dtype} (preprocessed pixels; "
                        "image files: see rlrp_onnx.preprocess.prepare)")


def _check_finite(images: np.ndarray) -> None:
    """RlrpError unless ``images`` are finite: a NaN or infinite pixel makes the logits, the class chosen
    and the relevance NaN or arbitrary."""
    if images.dtype.kind == "f" and images.size:
        finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        if not finite.all():
            raise RlrpError(f"image {int(np.argmin(finite))} holds NaN or infinite values; it cannot be explained")


def _check_top_k(top_k: int, classes: int) -> None:
    if top_k > classes:
        raise RlrpError(f"the {top_k} best classes were asked for, but the model has only {classes}")


class Explanations(NamedTuple):
    """Relevance shaped like the images (with a K axis after N for ``top_k``), classes and scores."""

    relevance: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


class Explainer:
    """An explainer model opened in ONNX Runtime.

    ``model`` is a source ONNX classifier (compiled in memory with ``rule``/``composite``/``options``
    and ``masks``/``adjoints``, as by ``compile_model``, except that for R-LRP ``adjoints`` defaults to
    "winograd" where CUDA is not expected to run, ``CPU_FORMS``; no rule: R-LRP) or an already compiled
    one (which keeps its rule and forms: naming others is an error); ``device`` is "auto", "cpu" or
    "cuda" (``provider`` tells which one really runs, ``notice`` why CUDA was not used under "auto");
    ``rule`` is the rule or composite it explains with, as the compiled model records it;
    ``batch_size`` caps the images per run, except for a model whose batch size is fixed: it runs that
    many (the last run filled up); ``input_shapes`` pins a source model's dynamic input sizes, as for
    ``compile_model``.
    """

    def __init__(self, model, rule: str | None = None, composite: str | None = None, options: Options | None = None,
                 device: str = "auto", batch_size: int = 8, output_name: str | None = None,
                 masks: str | None = None, adjoints: str | None = None,
                 input_shapes: dict[str, list[int]] | None = None):
        check_count(batch_size, "batch_size", "images")
        check_device(device)
        forms = {"masks": masks, "adjoints": adjoints}
        for_cpu = (composite is None and rule in (None, RLRP) and any(forms[k] is None for k in CPU_FORMS)
                   and not expects_cuda(device))
        compiled, meta, compiled_now = explainer_model(model, output_name, forms, input_shapes,
                                                       default_forms=CPU_FORMS if for_cpu else None,
                                                       rule=rule, composite=composite, options=options)
        self.explained_output, self.rule = meta[META_EXPLAINED_OUTPUT], meta[META_RULE]
        # Held: the bytes of a model compiled here, which ONNX Runtime's Python session keeps too (past
        # 2 GB, the model itself); else the caller's ModelProto, or the compiled file's path.
        self._held = (serialized(compiled) or compiled) if compiled_now else model
        del compiled
        if compiled_now:
            gc.collect()  # the compiler's graph, freed only by the cycle collector, still reaches the weights
        self.runtime = create_session(self._held, device)
        self.provider, self.notice = self.runtime.provider, self.runtime.notice
        image = image_input(self.runtime)
        self.input_shape = list(image.shape)
        # What top_k ranks: every class's logit, of which rlrp_class is the arg-max and rlrp_score one, or
        # (a contract model without it) the explained output, whose probabilities may tie where logits do not
        names = {node.name for node in self.runtime.session.get_outputs()}
        self._ranked = LOGITS_OUTPUT if LOGITS_OUTPUT in names else self.explained_output
        self.batch_size = fixed_batch(image) or batch_size

    @property
    def model(self) -> onnx.ModelProto:
        """The explainer model: the ModelProto given, or one read again on each access from the compiled
        file or from the bytes of the model compiled in memory (no second copy held beside ONNX
        Runtime's)."""
        if isinstance(self._held, onnx.ModelProto):
            return self._held
        if isinstance(self._held, bytes):
            return onnx.load_from_string(self._held)
        return load_model(self._held)[0]

    def explain(self, images: np.ndarray, targets: int | Sequence[int] | np.ndarray | None = None,
                top_k: int | None = None) -> Explanations:
        """Explain preprocessed ``images`` (N, …; whole numbers in its type's range for a model that takes
        integer pixels) for ``targets`` (one class per image, or one for all; negative = top class), or
        for each image's ``top_k`` best classes."""
        given = type(images).__name__
        try:
            images = np.asarray(images)
        except ValueError:  # a list of arrays of different shapes
            raise RlrpError("images must be one array (N, …) of preprocessed images of one size; got a sequence "
                            "of differently shaped arrays") from None
        except (TypeError, RuntimeError) as error:  # e.g. a torch tensor that requires grad, or of bfloat16
            raise RlrpError(f"images must be a numpy array (N, …) of preprocessed images; a {given} could not "
                            f"become one: {first_line(error)}") from None
        if images.ndim == 0:
            files = " (image files: see rlrp_onnx.preprocess.prepare)" if images.dtype.kind in "US" else ""
            raise RlrpError(f"images must be an array (N, …) of preprocessed images, got a {given}{files}")
        check_request(targets, top_k)
        _check_numbers(images)
        check_image_shape(image_input(self.runtime), images.shape, what="array of images")
        _check_finite(images)
        classes = class_count(self.runtime)
        if targets is not None:
            targets = target_classes(targets, len(images), classes)
        if top_k is not None and classes is not None:
            _check_top_k(top_k, classes)
        if len(images) == 0:  # nothing to run: empty results of the shapes a run would give
            ranks = () if top_k is None else (top_k,)
            return Explanations(np.zeros((0, *ranks, *images.shape[1:]), np.float32),
                                np.zeros((0, *ranks), np.int64), np.zeros((0, *ranks), np.float32))
        if top_k is None:
            return self._batched(images, targets)[0]
        top, ranked = self._batched(images, None, keep=self._ranked)  # the top class, and the scores ranked
        best = np.argsort(-ranked.reshape(len(images), -1), axis=1, kind="stable")  # ([N, K, 1, …] outputs)
        _check_top_k(top_k, best.shape[1])
        runs = [top if k == 0 and np.array_equal(top.classes, best[:, 0]) else self._batched(images, best[:, k])[0]
                for k in range(top_k)]
        return Explanations(*(np.stack([getattr(r, f) for r in runs], axis=1) for f in Explanations._fields))

    def _batched(self, images, targets, keep: str | None = None) -> tuple[Explanations, np.ndarray | None]:
        """Run in batches; returns the Explanations and the output ``keep`` (None when not asked for)."""
        parts, kept = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            result = run_explainer(self.runtime, images[chunk], None if targets is None else targets[chunk])
            parts.append(Explanations(*result[:3]))
            kept += [result.outputs[keep]] if keep else []
        joined = Explanations(*(np.concatenate([getattr(p, f) for p in parts]) for f in Explanations._fields))
        return joined, np.concatenate(kept) if keep else None
