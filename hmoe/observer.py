"""The stages' MLflow glue: what a stage logs and registers, called at its edges.

Values flow in, nothing flows back: no stage output depends on this module, so it is
in no stage's DVC deps and editing how a run is logged retrains nothing
(tests/unit/test_dvc_deps.py, tests/pipeline/test_repro.py,
tests/model/test_tracking_free.py). It is the one module that knows both the pipeline
(params, paths, model names) and MLflow; :mod:`hmoe.tracking` and :mod:`hmoe.registry`
know only MLflow, and receive what they log as arguments.

- :func:`stage`: a stage's child run with its declared params, how it ran and its
  input datasets.
- :func:`watch`: each trained network's run around a stage's :class:`StageHooks`, with
  per-epoch metrics, fit time and registration.
- :func:`evaluated` and :func:`finish_pipeline`: the evaluate stage's metrics,
  timings and confusion matrix, the mixture's registration under the champion rule,
  the lineage links and the closed parent run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hmoe import edge, paths, registry, runtime, tracking
from hmoe.data.storage import file_md5
from hmoe.edge import SplitFile, StageError
from hmoe.params import Params, flatten

# Keras, and the modules that import it, load where a stage runs a network: prepare and
# groups from params never start TensorFlow (about 5 s of CPU a process).
if TYPE_CHECKING:
    import keras

    from hmoe.groups import Groups
    from hmoe.mixture import Mixture
    from hmoe.stage_hooks import StageHooks
    from hmoe.steps.evaluate import Evaluation
    from hmoe.steps.hooks import Fit, NetworkJob

logger = logging.getLogger("hmoe")

CONFIG_FILE = Path(".cache/hmoe/mixture-config.json")  # the pyfunc's config artifact
TIMED_IMAGES = 1000  # enough for a stable rate; the full test split would double evaluate


# -- a stage's run --------------------------------------------------------------------


class StageRun:
    """The stage's MLflow child run, as the stage sees it."""

    def __init__(self, parent: str, register: bool, stage: str = "") -> None:
        self.parent = parent  # the pipeline's parent run id
        self.stage = stage  # the run's name: the stage, or `stage@group` for a network
        self.register = register  # `mlflow.register`

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        tracking.log_metrics(metrics, step)

    def log_dict(self, payload: Mapping[str, Any], name: str) -> None:
        tracking.log_dict(payload, name)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Keras callbacks that log each epoch's metrics to this run."""
        return [tracking.epoch_logger()]

    def register_network(
        self, model: keras.Model, name: str, example: np.ndarray, path: Path
    ) -> None:
        """Log and register a saved network, tied to its DVC output (when registering)."""
        if self.register:
            self.drop_superseded(name)
            registry.log_keras_model(model, name, example, output_tags(path))

    def drop_superseded(self, name: str) -> None:
        """Versions of ``name`` that this run replaces: a killed run's, or an earlier
        attempt's of this stage in this pipeline run (DVC kept none of their outputs).
        """
        registry.drop_superseded(name, self.parent, self.stage)

    def wall_times(self) -> dict[str, float]:
        """Wall seconds of every stage of this pipeline run finished so far."""
        return tracking.stage_wall_times(self.parent)


@contextlib.contextmanager
def stage(name: str, params: Params, splits: Mapping[str, SplitFile] = ()) -> Iterator[StageRun]:
    """The stage's MLflow child run with its declared params, how it ran (backend,
    precision, compiled: for a stage that loaded Keras) and its input datasets, logged
    from the arrays in memory.
    """
    logged = edge.stage_params(name, params)
    with (
        _user_errors(),
        tracking.stage_run(
            name, params.mlflow.experiment, logged, edge.data_digest(), paths.repo_root()
        ) as (_, parent),
    ):
        if "train.precision" in logged:  # a stage that runs networks: how it ran them
            import keras

            tracking.log_runtime(
                keras.backend.backend(),
                keras.mixed_precision.global_policy().name,
                runtime.resolve_jit(params.train.jit_compile)[0],
            )
        for context, split in dict(splits).items():
            tracking.log_dataset(context, split.x, split.y, split.path, file_md5(split.path))
        yield StageRun(parent, params.mlflow.register, name)


@contextlib.contextmanager
def pipeline(
    experiment: str, name: str, key: str, params: Params, tags: Mapping[str, str]
) -> Iterator[PipelineRun]:
    """A pipeline execution held in one process (a sweep's configuration x seed): its
    parent run, with the stage runs opened inside it (:func:`stage`, :func:`watch`)
    under it, recorded exactly as a `dvc exp run` is, plus ``tags``. An earlier parent
    of the same ``key`` still RUNNING was killed outright and is marked KILLED. The
    parent ends with every effective param, flattened, and the metrics put on the
    yielded :class:`PipelineRun`.
    """
    exp_id = tracking.setup(experiment, paths.repo_root())
    tagged = tracking.Pipeline("", key, tags)
    with tracking.under(tagged):
        stale = tracking.mark_killed(tracking.running_pipelines(exp_id, key), name)
        extra = {"resumes_runs": ",".join(stale)} if stale else {}
        run_id = tracking.create_parent(exp_id, name, extra)
    record = PipelineRun(run_id)
    with tracking.under(tracking.Pipeline(run_id, key, tags)):
        try:
            yield record
        except KeyboardInterrupt:
            tracking.end_run(run_id, "KILLED")
            raise
        except BaseException:
            tracking.end_run(run_id, "FAILED")
            raise
    try:
        tracking.finish_parent(run_id, record.metrics, (), record.tags, flatten(params))
    except Exception as err:  # the sweep's folder has the row regardless: never lose it
        logger.warning("MLflow did not take the parent run's summary (%s)", err)


class PipelineRun:
    """What a pipeline's parent run ends with: its summary metrics and tags."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A tracking server that does not answer stops the stage with one line (exit 2)."""
    try:
        yield
    except tracking.TrackingUnavailable as err:
        raise StageError(str(err)) from None


def output_tags(path: Path) -> dict[str, str]:
    """Tags that tie a registered version to the DVC output it was saved as."""
    return {"dvc_out": str(path), "dvc_md5": file_md5(path), **tracking.common_tags()}


# -- each trained network -------------------------------------------------------------


class Watched:
    """A stage's hooks with each network's MLflow run around them: the run opens before
    the network is built, logs every epoch, then its fit time, final metrics and
    registered version. It has both methods of :class:`hmoe.steps.hooks.Hooks` without
    subclassing it, which would load Keras in the stages that train nothing.
    """

    def __init__(self, hooks: StageHooks) -> None:
        self.hooks = hooks
        self._run: StageRun | None = None
        self._start = 0.0

    @contextlib.contextmanager
    def network(self, job: NetworkJob) -> Iterator[Fit]:
        from hmoe.steps.hooks import Fit

        inner = self.hooks
        with (
            stage(inner.run_name(job), inner.params, inner.splits) as run,
            inner.network(job) as fit,
        ):
            tracking.log_param("replicas", inner.replicas)
            if inner.resumed_at:
                tracking.set_tag("resumed_from_epoch", inner.resumed_at)
            self._run, self._start = run, time.perf_counter()
            yield Fit([*run.callbacks(), *fit.callbacks], fit.state_dir)

    def finished(self, job: NetworkJob, model: Any, summary: dict[str, Any]) -> dict[str, Any]:
        fit_s = time.perf_counter() - self._start
        summary = self.hooks.finished(job, model, summary)
        images = job.n_train * (summary["epochs_run"] - self.hooks.resumed_at)
        # timings go to MLflow only: a DVC metric would differ between identical models
        self._run.log_metrics({"fit_s": fit_s, "train_images_per_s": images / fit_s})
        self._run.log_metrics({f"final_{k}": float(v) for k, v in summary.items()})
        out = self.hooks.outputs.get(job.name)  # none: a sweep's network, in memory only
        if out is not None:
            example = self.hooks.splits["val"].x[:4]
            self._run.register_network(model, out.registered_name, example, out.model_path)
        return summary


def watch(hooks: StageHooks) -> Watched:
    """``hooks`` with each network's MLflow run around them."""
    return Watched(hooks)


# -- the evaluate stage ---------------------------------------------------------------


def time_inference(mix: Mixture, x: np.ndarray) -> dict[str, float]:
    """Routed (each branch on its share) vs dense (every network on every image).

    Logged to MLflow only: timings are not a DVC metric (identical models would
    show a difference in every `dvc metrics diff`).
    """
    start = time.perf_counter()
    routed = mix.predict_proba(x)
    routed_s = time.perf_counter() - start
    start = time.perf_counter()
    dense = mix.predict_dense(x)
    dense_s = time.perf_counter() - start
    return {
        "inference_routed_images_per_s": len(x) / routed_s,
        "inference_dense_images_per_s": len(x) / dense_s,
        "inference_routed_dense_max_abs_diff": float(np.abs(routed - dense).max()),
    }


def evaluated(
    run: StageRun,
    params: Params,
    mix: Mixture,
    test: tuple[np.ndarray, np.ndarray],
    result: Evaluation,
) -> None:
    """The evaluate run's metrics with inference timings, its confusion matrix
    (classes x classes, rows true) and the per-class table; then the mixture's
    registration, made `@champion` if it is better on val.
    """
    from hmoe import modelset
    from hmoe.metrics import confusion

    x, y = test
    classes = list(mix.groups.classes)
    run.log_metrics(result.metrics | time_inference(mix, x[:TIMED_IMAGES]))
    tracking.set_tag("best_control", result.best_control)
    matrix = confusion(y, result.labels["mixture"], len(classes))
    tracking.log_dict({"classes": classes, "matrix": matrix.tolist()}, "confusion.json")
    tracking.log_artifacts([paths.PER_CLASS])
    if params.mlflow.register:
        run.drop_superseded(modelset.MIXTURE)
        version = register_mixture(mix.groups, params, x[:2])
        val = json.loads((paths.stage_reports("train_gates") / "metrics.json").read_text())
        val_accuracy = float(val["val_accuracy"])
        registry.apply_champion_rule(modelset.MIXTURE, version, val_accuracy, file_md5(paths.VAL))


def register_mixture(groups: Groups, params: Params, example: np.ndarray) -> str:
    """Log and register the assembled mixture as a pyfunc (`hmoe-mixture`): its
    networks and config as artifacts, each network's md5 as a tag.
    """
    import hmoe
    from hmoe import modelset
    from hmoe.mixture import Prediction
    from hmoe.serving import CONFIG, MixturePyfunc, mixture_config, predictions_frame

    config = mixture_config(groups, params.mixture, params.gates.inputs)
    CONFIG_FILE.parent.mkdir(parents=True, exist_ok=True)
    CONFIG_FILE.write_text(json.dumps(config, indent=2, sort_keys=True))
    files = modelset.model_files(groups.names)
    n, n_classes = len(example), len(groups.classes)
    dummy = Prediction(
        probs=np.full((n, n_classes), 1 / n_classes, dtype=np.float32),
        group=np.zeros(n, dtype=np.int64),
        group_prob=np.ones(n, dtype=np.float32),
        specialist_weight=np.full(n, 0.5, dtype=np.float32),
    )
    tags = {f"dvc_md5.{name}": file_md5(path) for name, path in files.items()}
    return registry.log_pyfunc(
        modelset.MIXTURE,
        MixturePyfunc(),
        artifacts=files | {CONFIG: CONFIG_FILE},
        code_paths=[str(Path(hmoe.__file__).parent)],
        example=example,
        example_output=predictions_frame(dummy, list(groups.classes), list(groups.names)),
        tags=tags | tracking.common_tags(),
    )


def finish_pipeline(
    run: StageRun, params: Params, groups: Groups, result: Evaluation, files: Sequence[Path]
) -> None:
    """Link the pipeline run to the versions behind every network file, then put every
    effective param (flattened: `mlflow ui` compares runs by them), the summary metrics
    and the report on it and mark it finished.
    """
    from hmoe import modelset

    outs = modelset.model_files(groups.names)
    md5s = {name: file_md5(path) for name, path in outs.items() if path.is_file()}
    registry.link_lineage(run.parent, md5s)
    tags = {"best_control": result.best_control}
    tracking.finish_parent(run.parent, result.metrics, files, tags, flatten(params))
