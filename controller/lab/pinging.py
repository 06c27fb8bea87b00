"""A ping running in the background from a lab VM while the caller does something else (kills
the controller, restarts libvirtd): the demo's step 9 and the real-guest tests use it."""

from __future__ import annotations

import subprocess
import threading
import time

from controller.lab.lab import Lab


class BackgroundPing:
    """A ping from ``src`` (a netns VM: iputils in its namespace; a guest: busybox over its exec
    channel) running while the caller does something else; ``output()`` waits for it."""

    def __init__(self, lab: Lab, src: str, dst: str, *, count: int, interval: float) -> None:
        self.lab, self.src, self.ip = lab, src, lab.vms[dst].ip
        self.count, self.interval = count, interval
        self._out = ""
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> BackgroundPing:
        if self.lab.vms[self.src].kind == "libvirt":
            cmd = f"ping -i {self.interval} -c {self.count} -W 1 {self.ip}"
            limit = self.count * self.interval * 3 + 30

            def run() -> None:
                self._out = self.lab.guest_exec(self.src, cmd, timeout=limit).output

            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()
            time.sleep(0.5)  # running (and its first replies back) before the caller acts
            return self
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.vms[self.src].ns, "ping", "-n", "-i", str(self.interval),
             "-c", str(self.count), "-W", "1", self.ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self._proc.stdout is not None
        self._out = self._proc.stdout.readline() + self._proc.stdout.readline()  # banner, first reply
        return self

    def output(self) -> str:
        if self._thread is not None:
            self._thread.join(self.count * self.interval * 3 + 60)
            return self._out
        assert self._proc is not None
        rest, _ = self._proc.communicate(timeout=60)
        return self._out + rest
