"""The stage edge: everything a stage does around its step but MLflow, in every
stage's DVC deps.

- :mod:`hmoe.edge.start`: logging, one-line user errors, params read once;
- :mod:`hmoe.edge.runtime`: seeds, determinism, float precision and compilation;
- :mod:`hmoe.edge.store`: a stage's inputs and outputs by dvc.yaml's paths, as files
  (``dvc repro``, written atomically) or in memory (the sweep);
- :mod:`hmoe.edge.networks`: around each trained network, backup and resume, its epoch
  log, its files, figures and registration;
- :mod:`hmoe.edge.run`: the one runner of a stage function (:func:`~hmoe.edge.run.run_stage`).

The MLflow code is the observer's (:mod:`hmoe.observer`), which the runner is given and
which no stage lists: editing how runs are logged retrains nothing. The pure steps
(:mod:`hmoe.steps`) import nothing from here.
"""
