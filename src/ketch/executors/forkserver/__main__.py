"""``python -m ketch.executors.forkserver REQ_FD EVT_FD``: the fork server process."""

import sys

from ketch.executors.forkserver.server import server_main

sys.exit(server_main(sys.argv[1:]))
