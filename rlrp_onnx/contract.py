"""Names of the compiled-graph contract, version 1 (shared/RLRP.md)."""

VERSION = "1"
TARGET_INPUT = "rlrp_target"
RELEVANCE_OUTPUT = "rlrp_relevance"
CLASS_OUTPUT = "rlrp_class"
SCORE_OUTPUT = "rlrp_score"
LOGITS_OUTPUT = "rlrp_logits"  # beyond RLRP.md's version 1: every class's logit, which the explained one is chosen from
META_RULE = "rlrp.rule"
META_VERSION = "rlrp.version"
META_EXPLAINED_OUTPUT = "rlrp.explained_output"
META_IMAGE_INPUTS = "rlrp.image_inputs"
META_MASKS = "rlrp.masks"  # one of MASK_FORMS (compile_model's masks; absent: steps)
MASK_FORMS = ("steps", "comparisons")
META_ADJOINTS = "rlrp.adjoints"  # one of ADJOINT_FORMS (compile_model's adjoints; absent: conv)
ADJOINT_FORMS = ("conv", "winograd")
# compile_model's keywords for the form of the compiled graph: metadata key and choices (the first, the default)
FORMS = {"masks": (META_MASKS, MASK_FORMS), "adjoints": (META_ADJOINTS, ADJOINT_FORMS)}
# compile_model's target_input: rlrp_target with the default -1 (the contract's optional input), or
# without one, for runtimes that do not let a caller feed an input that has a default
TARGET_FORMS = ("optional", "required")
NAMES = (TARGET_INPUT, RELEVANCE_OUTPUT, CLASS_OUTPUT, SCORE_OUTPUT, LOGITS_OUTPUT)  # (and RELEVANCE_OUTPUT + anything)


LAYER_OUTPUT_PREFIX = "rlrp_relevance/"  # + tensor name: relevance exposed at an inner tensor


def holds_class_scores(shape) -> bool:
    """Whether a tensor of ``shape`` holds class scores: [N, K], or [N, K, 1, …] (a convolution as the
    classifier, as Caffe's models end)."""
    return shape is not None and len(shape) >= 2 and all(d == 1 for d in shape[2:])


def relevance_output_name(input_name: str, n_image_inputs: int) -> str:
    """Name of the relevance output for one image input."""
    return RELEVANCE_OUTPUT if n_image_inputs == 1 else f"{RELEVANCE_OUTPUT}_{input_name}"
