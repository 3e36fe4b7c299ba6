"""DSPy programs: the next version is the base program compiled by a DSPy optimizer on the dataset.

The base version is loaded from MLflow with the DSPy settings it was saved with (its LM), and all DSPy
work runs inside `dspy.context(...)`: the global `dspy.settings.configure` may only be called from one
thread, and the worker trains in a thread pool. The LM is, in order: the one given to the trainer (tests
pass `DummyLM`), `FLYWHEEL_RETRAINER_DSPY_LM`, the LM saved with the base version.

Examples are split by a hash of their request id into a training part (what the optimizer sees) and a
held-out part on which the base program (baseline) and the compiled program are both scored by exact
match of every output field. The compiled program is logged with `mlflow.dspy.log_model` (input
example, string signature of its fields) and its registration metadata (REFERENCE.md: input and output
fields, instructions, evaluation score, signature, module type, optimizer) goes into the MLmodel
metadata, the run's parameters and the registered version's tags.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import mlflow
import pandas as pd

from services.retrainer.adapters.dataset import Dataset
from services.retrainer.adapters.training import (
    BaseVersion,
    Candidate,
    TrainingFailed,
    evaluated,
    timed_side_by_side,
)
from services.retrainer.domain.examples import field_examples, outputs_match, split_holdout
from services.retrainer.settings import RetrainerSettings

log = logging.getLogger(__name__)

_OPTIMIZER_CLASS = {"bootstrap_few_shot": "BootstrapFewShot", "labeled_few_shot": "LabeledFewShot"}


def program_metadata(program: Any, input_fields: list[str], output_fields: list[str]) -> dict[str, Any]:
    """Signature facts of a DSPy program: per predictor and for the program as a whole."""
    predictors = []
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        predictors.append(
            {
                "name": name,
                "signature": signature.signature,
                "instructions": signature.instructions,
                "input_fields": list(signature.input_fields),
                "output_fields": list(signature.output_fields),
                "demos": len(getattr(predictor, "demos", []) or []),
            }
        )
    first = predictors[0] if predictors else {}
    return {
        "module_type": type(program).__name__,
        "input_fields": input_fields,
        "output_fields": output_fields,
        "signature": f"{', '.join(input_fields)} -> {', '.join(output_fields)}",
        "instructions": first.get("instructions", ""),
        "predictors": predictors,
    }


class DspyTrainer:
    model_type = "dspy"

    def __init__(self, settings: RetrainerSettings, lm: Any | None = None) -> None:
        self.optimizer = settings.retrainer_dspy_optimizer
        self.max_demos = settings.retrainer_dspy_max_demos
        self.holdout_fraction = settings.retrainer_dspy_holdout_fraction
        self.lm_name = settings.retrainer_dspy_lm
        self.lm = lm

    def run_name(self, now: datetime) -> str:
        return f"{now:%Y-%m-%d_%H%M%S}_dspy-{self.optimizer}_demos={self.max_demos}"

    def params(self) -> dict[str, Any]:
        return {
            "algorithm": "dspy",
            "optimizer": _OPTIMIZER_CLASS[self.optimizer],
            "max_demos": self.max_demos,
            "holdout_fraction": self.holdout_fraction,
            "lm": self.lm_name or ("given" if self.lm is not None else "saved with the base version"),
        }

    def _optimizer(self) -> Any:
        import dspy

        if self.optimizer == "labeled_few_shot":
            return dspy.LabeledFewShot(k=self.max_demos)

        def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
            expected = {k: example[k] for k in example.labels().keys()}  # noqa: SIM118 - Example API
            return outputs_match(expected, {k: getattr(prediction, k, None) for k in expected})

        return dspy.BootstrapFewShot(
            metric=metric, max_bootstrapped_demos=self.max_demos, max_labeled_demos=self.max_demos
        )

    def train(self, base: BaseVersion, dataset: Dataset) -> Candidate:
        import dspy
        from mlflow.dspy.load import _load_model  # settings without dspy.settings.configure (see module doc)
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        if base.uri is None:
            raise TrainingFailed("a DSPy retraining needs a base version to compile")
        wrapper = _load_model(base.uri)
        program = wrapper.model
        settings = dict(getattr(wrapper, "dspy_settings", {}) or {})
        if self.lm is not None:
            settings["lm"] = self.lm
        elif self.lm_name:
            settings["lm"] = dspy.LM(self.lm_name)
        if settings.get("lm") is None:
            raise TrainingFailed(
                "no LM: none was saved with the base version and FLYWHEEL_RETRAINER_DSPY_LM is unset"
            )

        baseline_program = program
        if base.baseline_uri is not None and base.baseline_uri != base.uri:
            baseline_program = _load_model(base.baseline_uri).model

        predictors = program.named_predictors()
        if not predictors:
            raise TrainingFailed(f"{type(program).__name__} has no predictors to optimise")
        first_sig, last_sig = predictors[0][1].signature, predictors[-1][1].signature
        input_fields = base.input_names or list(first_sig.input_fields)
        output_fields = base.output_names or list(last_sig.output_fields)

        parsed = field_examples(dataset.rows, input_fields, output_fields)
        metrics: dict[str, float] = {"dataset_rows": len(dataset.rows), "examples_parsed": len(parsed)}
        schema = dataset.schema_measurements(parsed.problems, base.baseline_label)
        if parsed.problems or not dataset.rows:
            return Candidate(None, schema, metrics)

        train_idx, held_idx = split_holdout(parsed.request_ids, self.holdout_fraction)
        trainset = [
            dspy.Example(**parsed.inputs[i], **parsed.outputs[i]).with_inputs(*input_fields)
            for i in train_idx
        ]
        held = [(parsed.inputs[i], parsed.outputs[i]) for i in held_idx]
        metrics |= {"train_examples": len(trainset), "held_out_examples": len(held)}

        with dspy.context(**settings):
            try:
                compiled = self._optimizer().compile(program.deepcopy(), trainset=trainset)
            except Exception as exc:
                raise TrainingFailed(f"{_OPTIMIZER_CLASS[self.optimizer]} failed: {exc!r}") from exc

            def answer(module: Any, i: int) -> dict[str, Any]:
                prediction = module(**held[i][0])
                return {f: getattr(prediction, f, None) for f in output_fields}

            timed, timed_baseline = timed_side_by_side(
                lambda i: answer(compiled, i), lambda i: answer(baseline_program, i), len(held)
            )
            assert timed_baseline is not None
            new_out, latencies, new_err = timed.results, timed.latencies_ms, timed.errors
            old_out, old_err = timed_baseline.results, timed_baseline.errors
            new_ok = [o is not None and outputs_match(held[i][1], o) for i, o in enumerate(new_out)]
            old_ok = [o is not None and outputs_match(held[i][1], o) for i, o in enumerate(old_out)]
            score = sum(new_ok) / len(held) if held else None
            baseline = sum(old_ok) / len(held) if held else None

            meta = program_metadata(compiled, input_fields, output_fields) | {
                "optimizer": _OPTIMIZER_CLASS[self.optimizer],
                "optimizer_params": {"max_demos": self.max_demos},
                "evaluation_score": score,
                "baseline_score": baseline,
                "base_version": base.version,
            }
            signature = ModelSignature(
                inputs=Schema([ColSpec("string", f) for f in input_fields]),
                outputs=Schema([ColSpec("string", f) for f in output_fields]),
            )
            example = held[0][0] if held else parsed.inputs[train_idx[0]]
            info = mlflow.dspy.log_model(
                compiled, name="model", signature=signature, input_example=example, metadata=meta
            )

        table = pd.DataFrame(
            {
                "request_id": [parsed.request_ids[i] for i in held_idx],
                "inputs": [json.dumps(h[0], default=str) for h in held],
                "expected": [json.dumps(h[1], default=str) for h in held],
                "prediction": [json.dumps(o, default=str) for o in new_out],
                "correct": new_ok,
                "error": new_err,
                "baseline_prediction": [json.dumps(o, default=str) for o in old_out],
                "baseline_correct": old_ok,
                "baseline_error": old_err,
                "latency_ms": latencies,
            }
        )
        mlflow.log_table(table, artifact_file="evaluation/held_out_examples.json")
        mlflow.log_dict(meta, "dspy/program_metadata.json")
        mlflow.log_params(
            {
                "dspy.module_type": meta["module_type"],
                "dspy.signature": meta["signature"],
                "dspy.input_fields": ",".join(input_fields),
                "dspy.output_fields": ",".join(output_fields),
                "dspy.instructions": str(meta["instructions"])[:6000],
            }
        )
        if score is not None:
            metrics["evaluation_score"] = score
        measurements = evaluated(
            schema,
            metrics,
            accuracy=score,
            latencies_ms=latencies,
            baseline_accuracy=baseline,
            baseline_latencies_ms=timed_baseline.latencies_ms,
        )
        tags = {
            "dspy.input_fields": ",".join(input_fields),
            "dspy.output_fields": ",".join(output_fields),
            "dspy.signature": meta["signature"],
            "dspy.instructions": str(meta["instructions"])[:5000],
            "dspy.module_type": meta["module_type"],
            "dspy.optimizer": meta["optimizer"],
            "dspy.evaluation_score": "" if score is None else f"{score:.6f}",
        }
        return Candidate(info, measurements, metrics, tags)
