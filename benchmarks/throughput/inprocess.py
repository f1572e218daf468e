"""The in-process upper bound, driven from the benchmark: one `inprocess_child` process per model,
kept for the whole run, one batch per point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.serving.common import log

CHILD = Path(__file__).with_name("inprocess_child.py")
METHODS = ("generate", "generate_batch")


@dataclass
class Bound:
    """The upper bound at one point: each method's tokens/s (NaN: it failed), the best one."""

    tokens_per_s: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> tuple[str, float]:
        """(method, tokens/s) of the faster method; ("", NaN) when both failed."""
        ok = {m: v for m, v in self.tokens_per_s.items() if v == v}
        if not ok:
            return "", float("nan")
        method = max(ok, key=lambda m: ok[m])
        return method, ok[method]


class InProcess:
    """The child process; ``close`` is safe to call at any time, more than once."""

    def __init__(self, hf: Path, threads: int, cb_memory: float, log_path: Path) -> None:
        self.hf = hf
        self.threads = threads
        self.cb_memory = cb_memory
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> InProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        # As in sllm's worker: idle OpenMP threads sleep instead of spinning, so this process
        # takes no CPU from the servers while they are measured.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.pop("PYTHONPATH", None)
        t0 = time.monotonic()
        with open(self.log_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(self.hf), str(self.threads), str(self.cb_memory)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        line = self._line("READY ")
        self.info = json.loads(line)
        log(f"in-process model loaded in {time.monotonic() - t0:.1f}s ({self.info})")
        return self

    def _line(self, prefix: str) -> str:
        """The child's next line starting with ``prefix``, waiting until it answers or exits."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the in-process child gave no {prefix.strip()} line:\n{tail}")

    def run(self, method: str, prompts: list[list[int]], new_tokens: int, reps: int) -> Any:
        """One command: the child's answer (seconds and tokens of each repetition, or error)."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        cmd = {"method": method, "prompts": prompts, "new_tokens": new_tokens, "reps": reps}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line("RESULT "))

    def bound(
        self,
        prompts: list[list[int]],
        new_tokens: int,
        reps: int,
        methods: tuple[str, ...] = METHODS,
    ) -> Bound:
        """Each method on the batch ``prompts``, ``reps`` timed repetitions each."""
        out = Bound()
        for method in methods:
            r = self.run(method, prompts, new_tokens, reps)
            out.seconds[method] = r["seconds"]
            if r["error"]:
                out.errors[method] = r["error"]
                out.tokens_per_s[method] = float("nan")
            else:
                out.tokens_per_s[method] = sum(r["tokens"]) / sum(r["seconds"])
        return out

    def close(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the child's loop ends at EOF
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
