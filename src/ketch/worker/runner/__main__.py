"""``python -m ketch.worker.runner DAG_ID TASK_ID RUN_ID --try N``: a pod's command."""

import sys

from ketch.worker.runner.entry import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
