"""The pipeline's steps, one function each: arrays and typed params in, models and
numbers out; no files, DVC or MLflow.

    prepare             hmoe.steps.data.prepare
    train_base          hmoe.steps.experts.train_base     (train_second_base: second=True)
    groups              hmoe.steps.groups.learn_groups
    train_specialists   hmoe.steps.experts.train_specialist  (one call per group)
    train_router        hmoe.steps.experts.train_router
    train_gates         hmoe.steps.gates.train_gates
    evaluate            hmoe.steps.evaluate.evaluate      (every control is built there)

Each DVC stage (``stages/<name>.py``) calls its step; tests call them directly, with
no hooks. Each step lives in its own module so that a stage's import closure, and so
its DVC deps, hold only what it runs. What a stage adds around each network's training
(its run, epoch log, resumable backup, cost) comes in through
:class:`hmoe.steps.hooks.Hooks`.
"""
