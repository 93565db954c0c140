"""Deciding one VNN-LIB 2.0 query in the worker of ``verify-model verify`` (``standard``): the checks of
section 5.3.2, the verdict, and the answer text with its assignment block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from verifier.errors import InputError
from verifier.spec.property import check_against_model
from verifier.spec.vnnlib import load_property
from verifier.verify.deadline import Deadline
from verifier.verify.instance import InstanceResult, LoadedInstance, VerifyConfig, load_model, verify_loaded
from verifier.verify.standard import SOUND_ELEMENT_TYPES, STANDARD_RESULTS


def decide_query(query: str, networks: list[str], deadline: Deadline) -> str:
    """Load and decide a query; the text ``verify`` prints (``answer_text``). Raises ``VerifierError``."""
    torch.set_num_threads(1)  # fastest for the attack's small batches, all the more on a busy CPU
    loaded = _load(query, networks)
    result = verify_loaded(loaded, VerifyConfig(timeout=deadline.seconds), deadline)
    return answer_text(result, loaded)


def _load(query: str, networks: list[str]) -> LoadedInstance:
    """Parse the query, map its network to a model file, then check section 5.3.2's conditions in the
    order it lists them: files for the declared networks, matching element types, sound types."""
    prop = load_property(query)
    path = network_path(prop.networks, networks, query)
    checker, model = load_model(path)
    check_model_inputs(prop, checker, query, path)
    check_model_types(prop, checker, query, path)
    check_declared_types(prop, query)
    check_against_model(prop, checker.n_inputs, checker.n_outputs, query)
    return LoadedInstance(prop, checker, model)


def network_path(declared: Sequence[str], mappings: list[str], query: str) -> str:
    """The model file of the query's single network from ``--network NAME=PATH`` arguments.

    A VNN-LIB 1.0 file declares no network; then exactly one mapping (any name) is needed.
    """
    pairs = []
    for token in mappings:
        name, sep, path = token.partition("=")
        if not (sep and name and path):
            raise InputError(f"--network takes NAME=MODEL.onnx, got {token!r}")
        pairs.append((name, path))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise InputError(f"--network maps a name more than once: {', '.join(names)}")
    if declared:
        unknown = [n for n in names if n not in declared]
        missing = [n for n in declared if n not in names]
        if unknown or missing:
            raise InputError(f"{query}: declares network(s) {', '.join(declared)}; "
                             f"--network given for {', '.join(names) or 'none'}")  # fmt: skip
        return dict(pairs)[declared[0]]
    if len(pairs) != 1:
        raise InputError(f"{query} declares no network: give exactly one --network NAME=MODEL.onnx")
    return pairs[0][1]


def check_model_inputs(prop, checker, query: str, path: str) -> None:
    """The query's declared inputs, concatenated in declaration order, must be the model's inputs in the
    model's order (the flat input of the engine and of the counterexample check): as many, of the same
    sizes, and, when the query uses the model's input names, declared in the model's order."""
    declared = [v for v in prop.variables if not v.is_output]
    names = list(checker.signature.input_names)
    if not prop.networks or len(names) == 1:  # VNN-LIB 1.0 (flat X_i), or one input whatever its name
        return
    spelled = [v.name for v in declared]
    if len(declared) != len(names):
        raise InputError(f"{query}: declares {len(declared)} inputs ({', '.join(spelled)}); "
                         f"{path} has {len(names)} ({', '.join(names)})")  # fmt: skip
    if sorted(spelled) == sorted(names) and spelled != names:
        raise InputError(f"{query}: declares the inputs in the order {', '.join(spelled)}; {path} takes them "
                         f"in the order {', '.join(names)}: declare them in the model's order")  # fmt: skip
    for variable, name, size in zip(declared, names, checker.sizes):
        if math.prod(variable.shape) != size:
            raise InputError(f"{query}: input {variable.name} {list(variable.shape)} has "
                             f"{math.prod(variable.shape)} elements; {path}'s input {name} has {size}")  # fmt: skip


def check_model_types(prop, checker, query: str, path: str) -> None:
    """Section 5.3.2: every declared type must be the model's, unless the query is written all in ``real``."""
    if all(t == "real" for t in prop.element_types):
        return
    input_types = iter(checker.input_types if len(checker.input_types) > 1 else ())
    for variable in prop.variables:
        exposed = checker.output_type if variable.is_output else next(input_types, checker.input_type)
        if variable.element_type != exposed:
            raise InputError(
                f"{query}: declares {variable.name} as {variable.element_type}, but {path} uses {exposed}"
            )


def check_declared_types(prop, query: str) -> None:
    """Section 5.3.2: refuse element types whose analysis this tool does not claim to be sound for,
    unless the query is written entirely in ``real`` (the user's consent to real-valued analysis)."""
    types = prop.element_types
    if all(t == "real" for t in types):
        return
    unsound = [t for t in types if t not in SOUND_ELEMENT_TYPES]
    if not unsound:
        return
    raise InputError(
        f"{query}: declares {', '.join(unsound)}, which this tool does not analyse soundly (it claims "
        f"{', '.join(SOUND_ELEMENT_TYPES)}); declare every variable real to accept real-valued analysis"
    )


def answer_text(result: InstanceResult, loaded: LoadedInstance) -> str:
    """The result line and, after ``sat``, the assignment block (module docstring)."""
    line = f"{STANDARD_RESULTS[result.verdict]}\n"
    if result.verdict != "sat" or result.counterexample is None:
        return line
    return line + assignment_block(loaded.prop.variables, result.counterexample.x, result.counterexample.y)


def assignment_block(variables, x: np.ndarray, y: np.ndarray) -> str:
    """Every declared variable with its values: inputs are consecutive slices of ``x``, outputs of ``y``."""
    flat = {False: np.asarray(x).reshape(-1), True: np.asarray(y).reshape(-1)}
    offsets = {False: 0, True: 0}
    lines = []
    for variable in variables:
        size = math.prod(variable.shape)
        start = offsets[variable.is_output]
        values = flat[variable.is_output][start : start + size]
        offsets[variable.is_output] = start + size
        lines.append(f"{variable.name} {variable.element_type} [{','.join(map(str, variable.shape))}]")
        lines.extend(repr(float(v)) for v in values)
    return "".join(f"{line}\n" for line in lines)
