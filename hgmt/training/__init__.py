"""Training: the train step, the loop with its evaluators, checkpoints, and the faults of long runs
(preemption, dead peers, the workdir lock)."""
