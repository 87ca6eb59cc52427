"""The task-combination study: a sweep's evaluated runs read and checked (`evaluations`), tables,
charts and the paper's conclusions judged on them."""
