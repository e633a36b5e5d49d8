"""The pipeline's steps, one function each: arrays and typed params in, models and
numbers out; no files, DVC or MLflow.

    prepare       hmoe.steps.data.prepare
    train_base    hmoe.steps.experts.train_base   (also the control's second base)
    groups        hmoe.steps.groups.learn_groups
    specialists   hmoe.steps.experts.train_specialists
    router        hmoe.steps.experts.train_router
    gates         hmoe.steps.gates.train_gates
    evaluate      hmoe.steps.evaluate.evaluate    (every control is built there)

The DVC stages (``stages/``) and the sweep runner (:mod:`hmoe.sweep`) call the same
functions. Each step lives in its own module so that a stage's import closure, and so
its DVC deps, hold only what it runs. What a caller adds around training (epoch logs,
resumable backups, tracking) comes in through :class:`hmoe.steps.hooks.Hooks`.
"""
