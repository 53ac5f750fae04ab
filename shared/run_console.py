"""What a local run of the DAG (`pipeline.py run-local`, and run_local with any kfp.local
runner) shows on the console: one line per task as it starts and as it ends (name, seconds,
status, key metric) and a closing summary, while everything kfp.local and the tasks print
(executor inputs, artifact listings, training logs, warnings) goes to a log file.

How task starts and ends are known: kfp.local logs "Executing task 'x'" and "Task 'x'
finished with status SUCCESS|FAILURE" through Python logging to sys.stdout, and prints each
task's own output (the subprocess's or the container's) with print(), all from the thread
that runs the task (ParallelFor iterations run in worker threads). RunConsole.capture()
swaps sys.stdout and sys.stderr for a stream that splits what is written into lines per
thread, so each line is told apart by the task running in its thread, even when two run at
once. The KFP executor inside the task prints its executor input (JSON) first: from it
come the task's directory (executor_output.json, the metrics read after it ends) and the
input that tells two instances of one component apart (a regional teacher's name).

The console line of each task, its key metric, is chosen in one table: KEY_METRICS."""

from __future__ import annotations

import builtins
import collections
import contextlib
import io
import json
import logging
import re
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from shared import artifact_keys as K
from shared.io.progress import format_duration

RUN_LOG = "run.log"
TAIL_LINES = 30  # a failed task's last lines shown on the console
MAX_METRIC_CHARS = 100  # a key metric longer than this is cut (the log has the rest)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_START = re.compile(r"Executing task '(?P<task>[^']+)'")
_END = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
_CACHED = re.compile(r"Task (?P<task>\S+) cache hit")
_SKIPPED = re.compile(r"Skipping (?:conditional )?task (?P<task>[^\s:]+)(?P<why>.*)")
# kfp.local's own log records ("12:01:02.345 - INFO - ...") and the KFP executor's preamble
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - ")
_EXECUTOR_INPUT = "Got executor_input:"


class LocalRunFailed(RuntimeError):
    """The local run failed; the console already shows which task, its last lines and the log."""


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class TaskEvent:
    kind: str  # start | end | cached | skipped
    task: str
    status: str = ""  # end: SUCCESS or FAILURE; skipped: why


def parse_event(line: str) -> TaskEvent | None:
    """The task event one line of kfp.local's log announces, if any (colours allowed)."""
    text = strip_ansi(line)
    if not _KFP_RECORD.match(text):  # a task's own output that merely quotes kfp is not an event
        return None
    if m := _START.search(text):
        return TaskEvent("start", m["task"])
    if m := _END.search(text):
        return TaskEvent("end", m["task"], m["status"])
    if m := _CACHED.search(text):
        return TaskEvent("cached", m["task"])
    if m := _SKIPPED.search(text):
        why = "condition false" if "condition" in m["why"] else "upstream failed" if "failed" in m["why"] else ""
        return TaskEvent("skipped", m["task"], why)
    return None


def base_name(task: str) -> str:
    """The component a task runs: kfp numbers a component's second use ('train-teacher-2')."""
    return re.sub(r"-\d+$", "", task)


class _Meta(SimpleNamespace):
    """One artifact's metadata (or the output parameters) as attributes, or by key
    (m[K.VAL_TOP1], the names in shared/artifact_keys.py); a missing key is an
    AttributeError either way, which makes its key metric empty rather than wrong."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class TaskOutputs:
    """What a finished task left: each output artifact's metadata (o.metrics.val_top1),
    its output parameters (o.params.Output) and its input parameters (o.inputs.name)."""

    artifacts: dict[str, dict] = field(default_factory=dict)
    params: _Meta = field(default_factory=_Meta)
    inputs: _Meta = field(default_factory=_Meta)

    def __getattr__(self, name: str) -> _Meta:
        arts = self.__dict__.get("artifacts", {})
        if name in arts:
            return _Meta(**arts[name])
        raise AttributeError(name)

    @classmethod
    def read(cls, task_dir: Path, inputs: dict | None = None) -> TaskOutputs:
        data = json.loads((task_dir / "executor_output.json").read_text())
        arts = {
            name: dict((a.get("artifacts") or [{}])[0].get("metadata") or {})
            for name, a in (data.get("artifacts") or {}).items()
        }
        return cls(arts, _Meta(**(data.get("parameterValues") or {})), _Meta(**(inputs or {})))


def _yes(flag: Any) -> bool:
    return bool(flag) and str(flag).lower() not in ("0", "0.0", "false")


def _split(o: TaskOutputs) -> str:
    m = o.metrics
    leak = "leak-free" if _yes(m[K.LEAK_FREE]) else "LEAKS between splits"
    n = {s: m[s + K.IMAGES_SUFFIX] for s in ("train", "val", "test")}
    return f"images train {n['train']:.0f} / val {n['val']:.0f} / test {n['test']:.0f}, {leak}"


def _student(o: TaskOutputs) -> str:
    m = o.metrics
    text = f"val top-1 {m[K.VAL_TOP1]:.3f}, test top-1 {m[K.TEST_TOP1]:.3f}"
    control = getattr(m, K.CE_CONTROL_VAL_TOP1, None)
    return text + (f" (CE-only control: val {control:.3f})" if control is not None else "")


def _calibrate(o: TaskOutputs) -> str:
    m = o.metrics
    # calibrate's output parameter `reason`, not its metadata key (the same text)
    gate = "blessed" if _yes(m[K.BLESSED]) else f"NOT blessed: {getattr(o.params, 'reason', '')}".rstrip(": ")
    bounds = o.artifacts.get("calibration", {}).get(K.GATE_BOUNDS)
    met = getattr(m, K.PLAN_CRITERIA_MET, None)
    plan = "not reported" if met is None else ("met" if _yes(met) else "NOT met")
    return (
        f"ECE {m[K.ECE_BEFORE]:.3f} -> {m[K.ECE_AFTER]:.3f} (T {m[K.TEMPERATURE]:.2f}); "
        f"plan criteria {plan}; gate ({bounds or 'unlabelled'} bounds): {gate}"
    )


def _manifest(o: TaskOutputs) -> str:
    phases = {k: str(v) for k, v in vars(o.manifest).items() if k.startswith(K.PHASE_PREFIX)}
    if not phases:
        raise AttributeError("the manifest's metadata has no phase statuses")
    counts = collections.Counter(phases.values())
    run = getattr(o.manifest, K.RUN_STATUS, None)
    text = "phases: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    text = (f"run {run}; " if run else "") + text
    odd = [k for k, v in sorted(phases.items()) if v != "completed"]
    return text + (f" ({', '.join(odd)})" if odd else "")


def _publish(o: TaskOutputs) -> str:
    r = o.params.Output
    if r.get("status") != "completed":
        return f"not published: {r.get('reason', '')}"
    cmp_ = r.get("comparison") or {}
    figures = "; ".join(
        f"{who} top-1 {(cmp_.get(who) or {}).get('top1', float('nan')):.3f}"
        for who in ("candidate", "current")
        if (cmp_.get(who) or {}).get("images")
    )
    head = f"published {r['version']}" if r.get("published") else "REFUSED (current release kept)"
    return head + (f" ({figures})" if figures else " (first release)" if r.get("published") else "")


@dataclass(frozen=True)
class TaskView:
    """How a component's tasks show on the console. label: the input parameter that tells two
    tasks of the component apart (the ParallelFor's regional teachers); metric: the key figure
    from its outputs (an exception, e.g. a missing key, leaves it empty)."""

    label: str | None
    metric: Callable[[TaskOutputs], str]


# The one place that says what each task's console line reports (keys: component names).
# Metric and metadata names: shared/artifact_keys.py (o.<output name>[K.<name>]).
KEY_METRICS: dict[str, TaskView] = {
    "ingest": TaskView(
        None, lambda o: f"records kept {o.metrics[K.RECORDS_KEPT]:.0f}, rejected {o.metrics[K.RECORDS_DROPPED]:.0f}"
    ),
    "cache-images": TaskView(
        None,
        lambda o: (
            f"images cached {o.metrics[K.CACHED]:.0f} "
            f"(fetched {o.metrics[K.FETCHED]:.0f}, "
            f"failed {o.metrics[K.FAILED]:.0f} = {o.metrics[K.FAIL_RATE]:.1%})"
        ),
    ),
    "split": TaskView(None, _split),
    "regional-split": TaskView("regions", _split),
    "stage-weights": TaskView(
        "role",
        lambda o: (
            f"{o.weights[K.MODEL_ID]}: "
            + (
                o.weights[K.SOURCE]
                if _yes(o.weights[K.PRETRAINED])
                else "no pretrained weights (model.pretrained: false)"
            )
        ),
    ),
    "baseline": TaskView(
        None, lambda o: f"test top-1 {o.metrics[K.TOP1_ACCURACY]:.3f} (chance {o.metrics[K.CHANCE_TOP1]:.3f})"
    ),
    "train-teacher": TaskView(
        "name", lambda o: f"val top-1 {o.metrics[K.TEACHER_VAL_TOP1]:.3f} ({o.metrics[K.EPOCHS_RUN]:.0f} epochs)"
    ),
    "evaluate-teacher": TaskView(
        "name", lambda o: f"test top-1 {o.metrics[K.TOP1_ACCURACY]:.3f}, top-5 {o.metrics[K.TOP5_ACCURACY]:.3f}"
    ),
    "teacher-logits": TaskView(
        "name",
        lambda o: (
            f"top-{o.metrics[K.TOP_K]:.0f} logits of "
            f"{o.metrics[K.SAMPLES]:.0f} train images "
            f"(teacher train top-1 {o.metrics[K.TRAIN_TOP1]:.3f})"
        ),
    ),
    "combine-soft-labels": TaskView(
        None,
        lambda o: (
            f"{o.metrics[K.SAMPLES]:.0f} soft labels at T={o.metrics[K.TEMPERATURE]:g} (top-k mass mean "
            f"{o.metrics[K.TOPK_MASS_MEAN]:.3f}, min {o.metrics[K.TOPK_MASS_MIN]:.3f}), "
            f"teacher agreement {o.metrics[K.TEACHER_AGREEMENT]:.2f}"
        ),
    ),
    "train-student": TaskView(None, _student),
    "calibrate": TaskView(None, _calibrate),
    "export-tfjs": TaskView(None, lambda o: f"bundle {o.metrics[K.MODEL_SIZE_MB]:.2f} MB ({o.bundle[K.QUANTIZATION]})"),
    "validate-export": TaskView(
        None,
        lambda o: (
            f"parity r {o.metrics[K.LOGITS_CORRELATION]:.4f}, top-1 agreement "
            f"{o.metrics[K.TOP1_AGREEMENT]:.0%}; gates "
            f"{'passed' if _yes(o.metrics[K.PASSED]) else 'FAILED'}"
        ),
    ),
    "export-skipped": TaskView(None, lambda o: str(o.params.Output.get("reason", o.params.Output))),
    "publish": TaskView(None, _publish),
    "run-parameters": TaskView(
        None, lambda o: "overridden: " + (", ".join(o.params.Output.get("overridden") or []) or "none")
    ),
    "training-manifest": TaskView(None, _manifest),
}


def key_metric(task: str, outputs: TaskOutputs) -> str:
    """The console's figure for a finished task ('' when the table has none or it fails)."""
    view = KEY_METRICS.get(base_name(task))
    if view is None:
        return ""
    text = view.metric(outputs)
    return text if len(text) <= MAX_METRIC_CHARS else text[: MAX_METRIC_CHARS - 3] + "..."


def task_label(task: str, inputs: dict) -> str:
    view = KEY_METRICS.get(base_name(task))
    value = inputs.get(view.label) if view and view.label else None
    return str(value) if value not in (None, "") else ""


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def format_task_line(
    status: str, task: str, label: str = "", seconds: float | None = None, metric: str = "", at: float | None = None
) -> str:
    """One console line: wall-clock time, status (start, ok, FAILED, cached, skipped), the task
    (with its label), seconds taken and the key metric."""
    stamp = time.strftime("%H:%M:%S", time.localtime(at if at is not None else time.time()))
    name = f"{task} [{label}]" if label else task
    secs = format_seconds(seconds) if seconds is not None else ""
    return f"{stamp}  {status:<7} {name:<38} {secs:>7}  {metric}".rstrip()


@dataclass
class TaskRun:
    """One task as followed through the log."""

    task: str
    started: float
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    label: str = ""
    task_dir: Path | None = None
    inputs: dict = field(default_factory=dict)
    announced: bool = False
    streaming: bool = False  # past kfp's "Streamed logs:": what follows is the task's own output
    ended: bool = False
    status: str = ""
    seconds: float = 0.0
    json_lines: list[str] | None = None  # the executor input being read

    @property
    def name(self) -> str:
        return f"{self.task} [{self.label}]" if self.label else self.task


def _no_indent(*args: object, **kwargs: object) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class _Capture:
    """The stream that stands in for sys.stdout and sys.stderr during a run."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, owner: RunConsole) -> None:
        self.owner = owner

    def write(self, text: str) -> int:
        self.owner.feed(text)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.owner.flush_log()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # no file behind it: callers that need one (faulthandler) fall back
        raise io.UnsupportedOperation("fileno")

    def writable(self) -> bool:
        return True


class RunConsole:
    """Follows a kfp.local run: the full log to `log_path`, task lines to `console`.

    Use say() for lines meant for both; capture() around the run; failure_report() after
    an exception. `clock` is injectable for tests (seconds, monotonic)."""

    def __init__(
        self,
        log_path: str | Path,
        console: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.console = console if console is not None else sys.stdout
        self.clock, self.wall = clock, wall
        self._log = open(self.log_path, "w", encoding="utf-8", errors="replace", buffering=1)
        self._lock = threading.RLock()
        self._partial: dict[int, str] = {}
        self._current: dict[int, TaskRun] = {}
        self.runs: list[TaskRun] = []
        self.failed: list[TaskRun] = []
        self.skipped: list[str] = []
        self.cached: list[str] = []

    # -- output --------------------------------------------------------------------------
    def say(self, line: str = "") -> None:
        """A line for the console, also kept in the log."""
        with self._lock:
            self.console.write(line + "\n")
            self.console.flush()
            self._log.write(f"## {line}\n")  # the console's lines stand out in the log: grep '^## '

    def log(self, line: str) -> None:
        """A line for the log only."""
        with self._lock:
            self._log.write(line + "\n")

    def flush_log(self) -> None:
        with self._lock:
            self._log.flush()

    def close(self) -> None:
        with self._lock:
            if self._log.closed:
                return
            for tid, rest in list(self._partial.items()):
                if rest:
                    self._line(tid, rest)
            self._partial.clear()
            self._log.close()

    def __enter__(self) -> RunConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capture -------------------------------------------------------------------------
    @contextmanager
    def capture(self) -> Iterator[None]:
        """sys.stdout and sys.stderr (so kfp's log handlers, print and warnings) into the log;
        the root logger at INFO into it too (kfp's notes on skipped tasks). Whatever kfp.local
        leaves behind is undone: it swaps builtins.print and the root logger's handlers per
        task, and two ParallelFor threads can leave either swapped for good."""
        stream = _Capture(self)
        root = logging.getLogger()
        saved = (sys.stdout, sys.stderr, builtins.print, root.level, root.handlers[:])
        # kfp indents a task's lines by swapping builtins.print, per task and from every thread:
        # two at once nest (or keep) the swap. Here each line carries its task's name instead.
        try:
            from kfp.local import logging_utils as kfp_logging
        except ImportError:  # another kfp layout: its indentation stays, nothing else changes
            kfp_logging = None
        indented_print = getattr(kfp_logging, "indented_print", None)
        if indented_print is not None:
            kfp_logging.indented_print = _no_indent
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d - %(levelname)s - %(message)s", "%H:%M:%S"))
        sys.stdout = sys.stderr = stream  # type: ignore[assignment]
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            sys.stdout, sys.stderr, builtins.print = saved[0], saved[1], saved[2]
            if indented_print is not None:
                kfp_logging.indented_print = indented_print
            root.setLevel(saved[3])
            root.handlers = saved[4]
            with self._lock:  # a task's last line without a newline
                for tid, rest in list(self._partial.items()):
                    if rest:
                        self._line(tid, rest)
                self._partial.clear()

    def feed(self, text: str) -> None:
        """Text written by some thread: whole lines are handled, the rest waits for its newline."""
        tid = threading.get_ident()
        with self._lock:
            buf = self._partial.get(tid, "") + text
            *lines, rest = buf.split("\n")
            self._partial[tid] = rest
            for line in lines:
                self._line(tid, line)

    # -- the state machine ---------------------------------------------------------------
    def _line(self, tid: int, raw: str) -> None:
        line = strip_ansi(raw).rstrip("\r")
        ev = parse_event(line)
        run = self._current.get(tid)
        if ev is not None and ev.kind == "start":
            run = TaskRun(ev.task, self.clock())
            self._current[tid] = run
            self.runs.append(run)
        # the task's name before each of its lines: two ParallelFor tasks interleave in the log
        self._log.write((f"{run.name} | " if run is not None else "") + line + "\n")
        if run is None:
            if ev is not None:
                self._pipeline_event(ev)
            return
        if not run.ended and ev is None and not _KFP_RECORD.match(line):
            run.lines.append(line)  # the task's own output, for a failure's tail
        if ev is None:
            if run.ended and line.strip() and set(line.strip()) == {"-"}:
                del self._current[tid]  # kfp's rule under a finished task: the task's record is over
            elif not run.ended:
                self._task_output(run, line)
        elif ev.kind == "end" and ev.task == run.task and not run.ended:
            self._end(run, ev.status)
        elif ev.kind in ("cached", "skipped"):
            self._pipeline_event(ev)

    def _pipeline_event(self, ev: TaskEvent) -> None:
        if ev.kind == "cached":
            self.cached.append(ev.task)
            self.say(format_task_line("cached", ev.task, at=self.wall()))
        elif ev.kind == "skipped" and ev.status != "condition false":
            # (a branch whose condition is false, kfp's 'condition-4', says nothing to a reader:
            # the branch that ran shows, e.g. export-skipped with its reason)
            self.skipped.append(ev.task)
            self.say(format_task_line("skipped", ev.task, metric=ev.status, at=self.wall()))

    def _task_output(self, run: TaskRun, line: str) -> None:
        text = line.strip()
        if run.json_lines is not None:
            run.json_lines.append(line)
            if text == "}":
                try:
                    executor_input = json.loads("\n".join(run.json_lines))
                except ValueError:
                    if len(run.json_lines) > 100_000:  # not JSON after all: stop collecting
                        run.json_lines = None
                    return
                run.json_lines = None
                self._got_executor_input(run, executor_input)
        elif text.endswith(_EXECUTOR_INPUT):
            run.json_lines = []
        elif _KFP_RECORD.match(text):
            run.streaming = run.streaming or "Streamed logs" in text
        elif run.streaming and not run.announced and text and not text.startswith("[KFP Executor"):
            # the task prints before its executor input (DockerRunner pulling an image): say it started
            self._announce(run)

    def _got_executor_input(self, run: TaskRun, executor_input: dict) -> None:
        run.inputs = dict((executor_input.get("inputs") or {}).get("parameterValues") or {})
        output_file = (executor_input.get("outputs") or {}).get("outputFile")
        if output_file:
            run.task_dir = Path(output_file).parent
        run.label = task_label(run.task, run.inputs)
        if not run.announced:
            self._announce(run)

    def _announce(self, run: TaskRun) -> None:
        run.announced = True
        self.say(format_task_line("start", run.task, run.label, at=self.wall()))

    def _end(self, run: TaskRun, status: str) -> None:
        if not run.announced:
            self._announce(run)
        run.ended, run.status = True, status
        run.seconds = self.clock() - run.started
        metric = ""
        if status == "SUCCESS":
            metric = self._metric(run)
        else:
            self.failed.append(run)
        self.say(
            format_task_line(
                "ok" if status == "SUCCESS" else "FAILED", run.task, run.label, run.seconds, metric, at=self.wall()
            )
        )

    def _metric(self, run: TaskRun) -> str:
        if run.task_dir is None:
            return ""
        try:
            return key_metric(run.task, TaskOutputs.read(run.task_dir, run.inputs))
        except Exception as err:  # a figure missing from the outputs: the line goes without it
            self._log.write(f"{run.name} | (no key metric: {type(err).__name__}: {err})\n")
            return ""

    # -- the end -------------------------------------------------------------------------
    def tasks_ok(self) -> int:
        return sum(1 for r in self.runs if r.status == "SUCCESS")

    def failure_report(self, error: BaseException) -> None:
        """After the run raised: the traceback into the log; on the console the failed task
        (or, when no task failed, the run itself), its last lines and where the log is."""
        self.log("".join(traceback.format_exception(error)).rstrip())
        with self._lock:
            still_running = [r for r in self._current.values() if not r.ended]
        if self.failed:
            run = self.failed[0]
            tail = list(run.lines)
            while tail and not tail[-1].strip():
                tail.pop()
            head = f"FAILED: task {run.name} after {format_seconds(run.seconds)}; its last {len(tail)} lines:"
        else:
            head = f"FAILED: the local run stopped ({type(error).__name__}: {str(error)[:200]}); the log's last lines:"
            tail = self._log_tail()
            if still_running:
                head = f"FAILED while {', '.join(r.name for r in still_running)} ran; the log's last lines:"
        self.say("")
        self.say(head)
        for line in textwrap.dedent("\n".join(tail)).splitlines():
            self.say(f"  | {line}")
        self.say(f"full log: {self.log_path}")

    def _log_tail(self) -> list[str]:
        self.flush_log()
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        return lines[-TAIL_LINES:]


def verdict_of_manifest(path: str | Path | None) -> list[str]:
    """The verdict lines TRAINING_MANIFEST.yaml ends a run with (the gate and its bounds, the
    plan's criteria, the run's failure): computed once, by the manifest step
    (shared/evaluate/plan_criteria.verdict_lines), only read here."""
    if not path or not Path(path).is_file():
        return ["verdict: unknown (no TRAINING_MANIFEST.yaml was written)"]
    import yaml

    verdict = (yaml.safe_load(Path(path).read_text()) or {}).get("verdict") or {}
    return list(verdict.get("lines") or ["verdict: not in the manifest"])


def summary_lines(
    summary: dict, output: str | Path, log_path: str | Path, tasks_ok: int, skipped: int = 0
) -> list[str]:
    """The closing lines of a local run: how long, how many tasks, where the results are, and
    last the verdict (the gate with its bounds, and the plan's criteria, met or not)."""
    out = Path(output).resolve()
    done = f"Done in {format_seconds(float(summary.get('seconds', 0)))}: {tasks_ok} tasks ok"
    lines = [done + (f", {skipped} skipped" if skipped else "") + "."]
    tfjs = summary.get("tfjs_model") or "not exported (the student was not blessed; see the manifest)"
    rows = [
        ("TF.js model", tfjs),
        ("TRAINING_MANIFEST.yaml", summary.get("training_manifest", "not written")),
        ("every output (JSON)", str(out / "run_summary.json")),
        ("full log", str(log_path)),
    ]
    lines += [f"  {k + ':':<24}{v}" for k, v in rows]
    return lines + verdict_of_manifest(summary.get("training_manifest"))
