"""The task-combination study: a sweep's evaluated runs read (`evaluations`) and checked to
compare (`comparable`), tables, charts and the paper's conclusions judged on them."""
