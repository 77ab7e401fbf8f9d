"""Airflow's ``map_index_template``: a name for each mapped instance, shown instead of its
bare map index (the API's ``rendered_map_index``, ``ketch tasks states``, the web UI).

The template is a task argument (``@task(map_index_template="{{ path }}")``,
``.partial(map_index_template=...)``, ``default_args``) rendered at the *end* of the try
with the try's own context, so it can name a value the task computed:
``get_current_context()["my_name"] = ...`` inside the task, then
``map_index_template="{{ my_name }}"``, or read the instance's arguments with
``"{{ task.op_kwargs['path'] }}"``. As in Airflow's task runner: after a task that
succeeded a rendering error fails the try (its message names the template); after a task
that failed, was skipped or rescheduled, a rendering error is dropped so it does not mask
the task's own outcome, and the instance keeps no name. The name is stored with the
try's outcome, cut to the column's 250 characters.
"""

from __future__ import annotations

from ketch.authoring.templating import TemplateError, environment

MAX_LENGTH = 250  # Airflow's task_instance.rendered_map_index is a String(250)


def render_map_index(*, strict: bool, task_id: str | None = None) -> str | None:
    """The rendered name of the instance this process ran (of ``task_id`` when given: a
    try that failed before its task started has none), or None (no template, or a
    template that failed to render when ``strict`` is False)."""
    from ketch.authoring.task_runtime import peek_last_executed

    executed = peek_last_executed()
    if executed is None or task_id not in (None, executed.task.task_id):
        return None
    template = getattr(executed.task, "map_index_template", None)
    if template is None:
        return None
    try:
        rendered = environment(executed.task.dag).from_string(template).render(executed.context)
    except Exception as exc:
        if not strict:
            return None
        raise TemplateError(
            f"task {executed.task.task_id!r}: map_index_template {template!r} could not be "
            f"rendered: {type(exc).__name__}: {exc}"
        ) from exc
    return str(rendered)[:MAX_LENGTH]
