"""The web UI: server-rendered pages (Jinja2), no front-end build step."""
