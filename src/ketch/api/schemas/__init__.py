"""Request bodies and responses of the REST API (``/api/v1``), as pydantic models.

Field names follow Airflow's public REST API (``dag_run_id``, ``total_entries``,
``queued_when``...) so scripts written against Airflow need few changes. Response
models are built from ORM rows with the ``from_*`` constructors; keeping that
mapping here keeps the routers thin. One module per resource (as the routers in
``ketch.api.rest``), ``common`` for what they share; import from the module.
"""
