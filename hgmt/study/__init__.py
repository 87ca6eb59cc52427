"""The task-combination study: tables, charts and the paper's conclusions judged on a sweep."""
