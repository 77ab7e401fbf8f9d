"""Bash tasks with Airflow's BashOperator semantics.

``bash -c COMMAND`` in its own process group (so a timeout can kill the whole
tree), output merged and streamed line by line to ``sys.stdout`` (the worker tees
it into the try's log), the last line returned as the XCom value. Exit code 99
skips the task (Airflow's ``skip_on_exit_code`` default).

``bash_command``, ``env`` and ``cwd`` are templated (rendered with the try's context
just before the command runs); a ``bash_command`` ending in ``.sh`` or ``.bash`` is a
template file (next to the DAG file, or in the DAG's ``template_searchpath``) whose
rendered text is written to a temporary script and run with ``bash SCRIPT``, as
Airflow's BashOperator does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ketch.authoring.tasks import BaseTask, TaskResult
from ketch.authoring.xcom_args import XComPull
from ketch.exceptions import SkipTask

if TYPE_CHECKING:
    from ketch.authoring.context import Context

SKIP_EXIT_CODE = 99


def bash_env(env: dict[str, str] | None, append_env: bool, context: Context) -> dict[str, str]:
    """``env`` replaces the environment unless ``append_env`` (Airflow's rule), plus context vars."""
    if env is None:
        result = dict(os.environ)
    elif append_env:
        result = {**os.environ, **env}
    else:
        result = dict(env)
    for key, ctx_key in (
        ("KETCH_CTX_DAG_ID", "dag_id"),
        ("KETCH_CTX_TASK_ID", "task_id"),
        ("KETCH_CTX_DAG_RUN_ID", "run_id"),
        ("KETCH_CTX_TRY_NUMBER", "try_number"),
        ("KETCH_CTX_LOGICAL_DATE", "ts"),
    ):
        value = context.get(ctx_key)
        if value is not None:
            result[key] = str(value)
    return result


@contextmanager
def _working_directory(cwd: str | None) -> Iterator[str]:
    """The given folder (which must exist), else a temporary one as Airflow does."""
    if cwd is None:
        with tempfile.TemporaryDirectory(prefix="ketchtmp") as tmp:
            yield tmp
        return
    if not os.path.exists(cwd):
        raise FileNotFoundError(f"Can not find the cwd: {cwd}")
    if not os.path.isdir(cwd):
        raise NotADirectoryError(f"The cwd {cwd} must be a directory")
    yield cwd


@contextmanager
def _script_file(command: str, workdir: str, script: bool) -> Iterator[list[str]]:
    """The argv that runs ``command``: ``bash -c``, or ``bash FILE`` for a script."""
    if not script:
        yield ["bash", "-c", command]
        return
    with tempfile.NamedTemporaryFile("w", dir=workdir, suffix=".sh") as fh:
        fh.write(command)
        fh.flush()
        yield ["bash", os.path.basename(fh.name)]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the command and everything it started: TERM, then KILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bash(
    command: str,
    *,
    env: dict[str, str] | None,
    append_env: bool,
    cwd: str | None,
    context: Context,
    skip_on_exit_code: int | None = SKIP_EXIT_CODE,
    script: bool = False,
) -> str:
    """Run ``command``; return its last output line or raise SkipTask / RuntimeError.

    ``script``: ``command`` is the text of a script (a rendered template file), written
    to a temporary file in the working folder and run as ``bash FILE``.
    """
    last_line = ""
    with _working_directory(cwd) as workdir, _script_file(command, workdir, script) as argv:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=bash_env(env, append_env, context),
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                last_line = raw.decode("utf-8", errors="backslashreplace").rstrip()
                sys.stdout.write(last_line + "\n")
                sys.stdout.flush()
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
    if skip_on_exit_code is not None and code == skip_on_exit_code:
        raise SkipTask(f"Bash command returned exit code {code}. Skipping.")
    if code != 0:
        raise RuntimeError(
            f"Bash command failed. The command returned a non-zero exit code {code}."
        )
    return last_line


class BashTask(BaseTask):
    """Runs a bash command (Airflow's BashOperator)."""

    kind = "bash"
    template_fields: tuple[str, ...] = ("bash_command", "env", "cwd")
    template_ext: tuple[str, ...] = (".sh", ".bash")

    def __init__(
        self,
        task_id: str,
        bash_command: str = "",
        *,
        env: dict[str, str] | None = None,
        append_env: bool = False,
        cwd: str | None = None,
        skip_on_exit_code: int | None = SKIP_EXIT_CODE,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id, **kwargs)
        self.bash_command = bash_command
        self.env = env
        self.append_env = append_env
        self.cwd = cwd
        self.skip_on_exit_code = skip_on_exit_code

    def command(self, context: Context, xcom_pull: XComPull) -> str:
        return self.bash_command

    def rendered_inputs(self) -> dict[str, Any]:
        """Templated fields rendered before the command is known (``@task.bash``'s args)."""
        return {}

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        from ketch.authoring.templating import render_fields, report_rendered

        command = self.command(context, xcom_pull)
        self._check_command(command)
        rendered = render_fields(
            self,
            context,
            {"bash_command": command, "env": self.env, "cwd": self.cwd},
            xcom_pull=xcom_pull,
        )
        report_rendered({**self.rendered_inputs(), **rendered})
        self._check_command(rendered["bash_command"])
        output = run_bash(
            rendered["bash_command"],
            env=rendered["env"],
            append_env=self.append_env,
            cwd=rendered["cwd"],
            context=context,
            skip_on_exit_code=self.skip_on_exit_code,
            script=command.endswith(self.template_ext),
        )
        return TaskResult(return_value=output)

    def _check_command(self, command: Any) -> None:
        if not isinstance(command, str) or not command.strip():
            raise TypeError(
                f"task {self.task_id!r}: the bash command must be a non-empty string, got {command!r}"
            )


class BashDecoratedTask(BashTask):
    """``@task.bash``: the decorated callable returns the command to run.

    As Airflow's ``_BashDecoratedOperator``: ``op_args`` and ``op_kwargs`` are rendered
    before the call, the command it returns is rendered after it (with ``env`` and
    ``cwd``), and a returned command ending in ``.sh``/``.bash`` is a template file.
    """

    template_fields: tuple[str, ...] = ("op_args", "op_kwargs", "bash_command", "env", "cwd")

    def __init__(
        self,
        task_id: str,
        python_callable: Callable[..., Any],
        *,
        op_args: tuple[Any, ...] | list[Any] = (),
        op_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id, **kwargs)
        self.python_callable = python_callable
        self.op_args = tuple(op_args)
        self.op_kwargs = dict(op_kwargs or {})
        self._rendered_inputs: dict[str, Any] = {}

    def rendered_inputs(self) -> dict[str, Any]:
        return self._rendered_inputs

    def command(self, context: Context, xcom_pull: XComPull) -> str:
        from ketch.authoring.python import context_kwargs
        from ketch.authoring.templating import render_fields

        inputs = render_fields(
            self,
            context,
            {"op_args": self.op_args, "op_kwargs": self.op_kwargs},
            xcom_pull=xcom_pull,
        )
        self._rendered_inputs = inputs
        args, kwargs = tuple(inputs["op_args"]), dict(inputs["op_kwargs"])
        result: str = self.python_callable(
            *args, **context_kwargs(self.python_callable, args, kwargs, context)
        )
        return result
