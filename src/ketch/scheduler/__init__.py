"""The scheduler: run creation, the scheduling loop and the task state machine."""
