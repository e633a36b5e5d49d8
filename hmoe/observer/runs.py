"""What a stage's runs record in MLflow, for both runners: :class:`Observer`.

Values flow in, nothing flows back: no stage output depends on this package, so it is
in no stage's DVC deps and editing how a run is logged retrains nothing
(tests/unit/test_dvc_deps.py, tests/pipeline/test_repro.py,
tests/model/test_tracking_free.py). This module knows both the pipeline (params,
paths, model names) and MLflow; :mod:`.tracking` and :mod:`.registry` know only MLflow,
and receive what they log as arguments.

- :meth:`Observer.run`: a stage's (or a trained network's) child run with its declared
  params, how it ran, its input datasets and the runner's tags;
- :class:`StageRun`: what a stage logs into it; the evaluate stage's figures, timings
  and confusion matrix, the mixture's registration under the champion rule, the
  lineage links and the closed parent run;
- :func:`pipeline`: a pipeline execution held in one process (a sweep's pair), whose
  parent the stage runs go under.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hmoe import paths
from hmoe.data.storage import file_md5
from hmoe.edge.start import StageError, stage_params
from hmoe.edge.store import data_digest
from hmoe.observer import finite, registry, tracking
from hmoe.params import Params, flatten

# Keras, and the modules that import it, load where a stage runs a network: prepare and
# groups from params never start TensorFlow (about 5 s of CPU a process).
if TYPE_CHECKING:
    import keras

    from hmoe.groups import Groups
    from hmoe.mixture import Mixture
    from hmoe.steps.evaluate import Evaluation

logger = logging.getLogger("hmoe")

CONFIG_FILE = Path(".cache/hmoe/mixture-config.json")  # the pyfunc's config artifact
TIMED_IMAGES = 1000  # enough for a stable rate; the full test split would double evaluate
_held_record: contextvars.ContextVar[PipelineRun] = contextvars.ContextVar("hmoe_record")


# -- a stage's run --------------------------------------------------------------------


class StageRun:
    """One open run of a stage, as the stage sees it."""

    def __init__(self, parent: str, params: Params, stage: str, on_disk: bool) -> None:
        self.parent = parent  # the pipeline's parent run id
        self.params = params
        self.stage = stage  # the run's name: the stage, or `stage@group` for a network
        self.on_disk = on_disk  # its outputs are files (registered), not memory
        self.finished = False  # it closed the pipeline's parent run

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        tracking.log_metrics(metrics, step)

    def log_param(self, key: str, value: Any) -> None:
        tracking.log_param(key, value)

    def set_tag(self, key: str, value: Any) -> None:
        tracking.set_tag(key, value)

    def log_dict(self, payload: Mapping[str, Any], name: str) -> None:
        tracking.log_dict(payload, name)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Keras callbacks that log each epoch's metrics to this run."""
        return [tracking.epoch_logger()]

    def register_network(
        self, model: keras.Model, name: str, example: np.ndarray, path: Path
    ) -> None:
        """Log and register a saved network, tied to its DVC output (when registering)."""
        if self.params.mlflow.register:
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

    def evaluated(
        self,
        params: Params,
        mix: Mixture,
        test: tuple[np.ndarray, np.ndarray],
        result: Evaluation,
        *,
        tables: Sequence[Path],
        val_accuracy: float,
        val_digest: str,
    ) -> None:
        """The evaluate run's metrics with inference timings and its confusion matrix
        (classes x classes, rows true); on files, the tables the stage wrote and the
        mixture's registration, made `@champion` if its ``val_accuracy`` (the gates
        stage's) is better on the val split of ``val_digest``. The stage hands over
        what it wrote and read: this module opens no pipeline file itself.
        """
        from hmoe import modelset
        from hmoe.metrics import confusion

        x, y = test
        classes = list(mix.groups.classes)
        tracking.log_metrics(result.metrics | time_inference(mix, x[:TIMED_IMAGES]))
        tracking.set_tag("best_control", result.best_control)
        matrix = confusion(y, result.labels["mixture"], len(classes))
        tracking.log_dict({"classes": classes, "matrix": matrix.tolist()}, "confusion.json")
        if not self.on_disk:
            return
        tracking.log_artifacts(tables)
        if params.mlflow.register:
            self.drop_superseded(modelset.MIXTURE)
            version = register_mixture(mix.groups, params, x[:2])
            registry.apply_champion_rule(modelset.MIXTURE, version, val_accuracy, val_digest)

    def finish_pipeline(
        self,
        params: Params,
        networks: Mapping[str, str],
        result: Evaluation,
        files: Sequence[Path],
    ) -> None:
        """Close the pipeline run: a held one (a sweep's pair) takes the summary metrics
        and tags, and closes itself (:func:`pipeline`); otherwise link it to the
        versions behind every network file (``networks``: registered name -> the md5
        of the file the stage read), then put every effective param (flattened:
        `mlflow ui` compares runs by them), the summary metrics and the report on it and
        mark it finished.
        """
        tags = {"best_control": result.best_control}
        held = _held_record.get(None)
        if held is not None:
            held.metrics |= {k: float(v) for k, v in result.metrics.items() if finite(v)}
            held.tags |= tags
            return
        registry.link_lineage(self.parent, dict(networks))
        tracking.finish_parent(self.parent, result.metrics, files, tags, flatten(params))
        self.finished = True


class Observer:
    """MLflow's record of a stage's runs, the same under `dvc repro` and the sweep: a
    child run per stage (per network for a training stage) under the pipeline's parent.
    """

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self.closed: list[str] = []  # the parent runs its stages closed (evaluate's)

    def pointers(self) -> list[str]:
        """Where to look at what was recorded: for each pipeline a stage closed, the link
        that opens its experiment's runs table (the last line a pipeline run logs).
        """
        if not self.closed:
            return []
        link, serve = tracking.runs_table(self.experiment)
        where = f" (served by `{serve}`)" if serve else ""
        return [f"MLflow runs of experiment {self.experiment!r}{where}: {link}"]

    @contextlib.contextmanager
    def run(self, stage: Any, name: str, tags: Mapping[str, str]) -> Iterator[StageRun]:
        """The child run ``name`` of ``stage`` (:class:`hmoe.edge.run.Stage`, passed in
        by it: this package imports nothing from the runner): its declared params, how it ran (for a
        stage that runs networks), the datasets it read so far and ``tags``.
        """
        params = stage.params
        logged = stage_params(name, params)
        with self._open(name, logged, data_digest(stage.store), tags) as parent:
            if "train.precision" in logged:  # a stage that runs networks: how it ran them
                import keras

                from hmoe.edge.runtime import resolve_jit

                tracking.log_runtime(
                    keras.backend.backend(),
                    keras.mixed_precision.global_policy().name,
                    resolve_jit(params.train.jit_compile)[0],
                )
            for context, (x, y, path) in stage.datasets.items():
                tracking.log_dataset(context, x, y, path, stage.store.digest(path))
            run = StageRun(parent, params, name, stage.store.on_disk)
            yield run
            if run.finished:
                self.closed.append(parent)

    def replay(
        self, params: Params, logged: Mapping[str, Any], digest: str | None, tags: Mapping
    ) -> None:
        """Record again runs whose stage was not run (a sweep that reused its outputs):
        run name -> what it was given (:class:`hmoe.edge.run.Logged`).
        """
        for name, given in logged.items():
            declared = stage_params(name, params)
            with self._open(name, declared, digest, tags):
                for key, value in given.params.items():
                    tracking.log_param(key, value)
                _log_finite(given.metrics)

    @contextlib.contextmanager
    def _open(
        self, name: str, params: Mapping[str, Any], digest: str | None, tags: Mapping
    ) -> Iterator[str]:
        root = paths.repo_root()
        with (
            _user_errors(),
            tracking.stage_run(name, self.experiment, params, digest, root) as (_, parent),
        ):
            for key, value in tags.items():
                tracking.set_tag(key, value)
            yield parent


@contextlib.contextmanager
def pipeline(
    experiment: str, name: str, key: str, params: Params, tags: Mapping[str, str]
) -> Iterator[PipelineRun]:
    """A pipeline execution held in one process (a sweep's configuration x seed): its
    parent run, with the stage runs opened inside it (:meth:`Observer.run`) under it,
    recorded exactly as a `dvc exp run` is, plus ``tags``. An earlier parent
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
    token = _held_record.set(record)
    with tracking.under(tracking.Pipeline(run_id, key, tags)):
        try:
            yield record
        except KeyboardInterrupt:
            tracking.end_run(run_id, "KILLED")
            raise
        except BaseException:
            tracking.end_run(run_id, "FAILED")
            raise
        finally:
            _held_record.reset(token)
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


def register_mixture(groups: Groups, params: Params, example: np.ndarray) -> str:
    """Log and register the assembled mixture as a pyfunc (`hmoe-mixture`): its
    networks and config as artifacts, each network's md5 as a tag.
    """
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
        example=example,
        example_output=predictions_frame(dummy, list(groups.classes), list(groups.names)),
        tags=tags | tracking.common_tags(),
    )


def _log_finite(metrics: Mapping[str, Any]) -> None:
    """Log what is finite; a failure is a warning (a sweep's folder has the figures)."""
    try:
        tracking.log_metrics({k: float(v) for k, v in metrics.items() if finite(v)})
    except Exception as err:
        logger.warning("MLflow did not take the metrics (%s)", err)
