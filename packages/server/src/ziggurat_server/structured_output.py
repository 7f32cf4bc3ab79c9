"""The request's output constraint (response_format, structured_outputs, guided_*) as the
engine's StructuredOutputsParams. Whether it compiles is the engine's check, made where the
request enters it; its errors name the field given here."""

from __future__ import annotations

from ziggurat_core.engine.sampling_params import StructuredOutputsParams
from ziggurat_core.protocol.structured import (
    ConstraintFieldsError,
    StructuredOutputFields,
    output_constraint,
)

from .errors import bad_request


def structured_outputs_params(request: StructuredOutputFields) -> StructuredOutputsParams | None:
    try:
        constraint = output_constraint(request)
    except ConstraintFieldsError as exc:
        raise bad_request(str(exc), param=exc.param) from None
    if constraint is None:
        return None
    if constraint.kind == "json":
        return StructuredOutputsParams(json=constraint.value, param=constraint.field)
    if constraint.kind == "json_object":
        return StructuredOutputsParams(json_object=True, param=constraint.field)
    if constraint.kind == "regex":
        return StructuredOutputsParams(regex=constraint.value, param=constraint.field)
    if constraint.kind == "choice":
        return StructuredOutputsParams(choice=list(constraint.value), param=constraint.field)
    return StructuredOutputsParams(grammar=constraint.value, param=constraint.field)
