"""Keep the web process's start-up heap out of the garbage collector's full passes.

Why: a web process holds about 200,000 container objects once it has imported FastAPI,
SQLAlchemy, pydantic, Jinja2 and ketch. CPython's full (generation 2) collection walks
all of them; it runs every few dozen page requests (each page allocates many objects:
ORM rows, template context), and on a busy 2-core machine one pass took 300-900 ms, the
whole p99 of the DAGs list and the grid (``python -m benchmarks.web_ui``; the slow
requests were exactly those with a generation 2 pass, measured with ``gc.callbacks``).

Those objects live as long as the process, so scanning them finds nothing. At start-up
we collect once (so no garbage cycle is kept forever) and ``gc.freeze()`` the rest into
the permanent generation: later passes walk only what was allocated since, a few
thousand objects (under 25 ms on the same loaded machine). Cycles created after start-up
are collected as before. The fork server does the same for its children (copy-on-write).

Once per process: a second app started in the same process (tests, ``dag.test()``'s
inline server) would otherwise freeze whatever the first one left alive, and a frozen
cycle that becomes garbage is never freed.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

_frozen = False


def warm_up() -> None:
    """Build now what the first requests would build and keep for the process's life, so
    that it is frozen with the rest: SQLAlchemy's mapper configuration (done at the first
    query otherwise) and every compiled UI template (Jinja compiles on first use)."""
    from sqlalchemy.orm import configure_mappers

    from ketch.web.templates import templates

    configure_mappers()
    for name in templates.env.list_templates(extensions=["html"]):
        templates.env.get_template(name)


def freeze_startup_heap() -> int:
    """Collect, then move every object alive now out of the collector's passes, the first
    time in this process; returns how many objects are frozen."""
    global _frozen
    if _frozen:
        return gc.get_freeze_count()
    _frozen = True
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: froze %d start-up objects", frozen)
    return frozen
