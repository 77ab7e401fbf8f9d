"""The task-try side: what runs inside the forked subprocess or the pod.

Kept light on purpose: nothing here imports the database, FastAPI or Uvicorn.
"""
