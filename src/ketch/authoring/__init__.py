"""What DAG files import: DAGs, tasks, params, schedules. Kept light for task tries."""
