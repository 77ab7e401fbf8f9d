"""A try's log from its first byte to its archive, and every way to read it.

A try's output (its own prints, the runner's lines, child processes such as a bash
task) goes into a pipe read by a **log pump** process (``pump.py``) that the try
forks first thing: the pump masks secrets (``masking.py``), appends the bytes to the
try's live file, echoes them to the pod's stdout (plain or JSON lines,
``json_lines.py``), and ships new bytes to the **archive** in chunks
(``shipper.py``, ``archive/``). Because the pump is its own process, a try killed
with SIGKILL (an OOM kill, its timeout) still has every line it wrote.

When a try ends without its final flush, the scheduler **rescues** the missing tail
(``rescue.py``) from the try's live file (local executor) or from the pod's log
through the Kubernetes API before the pod is deleted. **Reading** (``reader.py``)
falls back in a fixed order: the live source while the try runs, the archive after.

Every source holds the same byte stream (the masked output), so a reader that
switches from one source to the next carries on at the same byte offset: no gap, no
repeat.
"""
