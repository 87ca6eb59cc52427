"""Training: the config's check before any work (`config_check`), the train step, the loop that
opens and restores what a run uses (`loop`) and the trainer that steps, logs, saves and
evaluates (`trainer`, with its `evaluators`: their settings in `eval_settings`, the best
checkpoint in `best_checkpoint`, the reports after training in `eval_reports`), checkpoints,
joining a multi-process job (`cluster`, its coordinator's address checked in `coordinator`), and
the faults of long runs (preemption, dead peers, the workdir lock)."""
