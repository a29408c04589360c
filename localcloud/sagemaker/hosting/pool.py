"""A production variant's instances: start, scale, replace on death, retire with draining."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from localcloud.sagemaker.hosting.process import ContainerSpec, InstanceProcess, InstanceStartError
from localcloud.sagemaker.hosting.queue import Invocation, RequestQueue
from localcloud.sagemaker.images import ImageNotEmulated, image_profile

log = logging.getLogger(__name__)

Execute = Callable[[Invocation, InstanceProcess], None]
LOAD_TIMEOUT_S = 600.0


class _Slot:
    """An instance plus its worker threads (one per concurrent invocation it may run)."""

    def __init__(self, instance: InstanceProcess) -> None:
        self.instance = instance
        self.retiring = threading.Event()
        self.threads: list[threading.Thread] = []


class VariantPool:
    """Instances of one variant; each takes at most ``slots`` requests at a time from the endpoint queue."""

    def __init__(
        self,
        variant: str,
        container: ContainerSpec,
        instance_type: str,
        slots: int,
        queue: RequestQueue,
        execute: Execute,
        aws_env: dict[str, str],
        on_dead: Callable[[str], None] | None = None,
    ) -> None:
        self.variant = variant
        self.container = container
        self.instance_type = instance_type
        self.slots = slots
        self.queue = queue
        self.execute = execute
        self.aws_env = aws_env
        self.on_dead = on_dead
        self.desired = 0
        self.active = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._top_up_lock = threading.Lock()
        self._members: list[_Slot] = []

    @property
    def ready_count(self) -> int:
        """Instances that are loaded and serving."""
        with self._lock:
            return sum(1 for m in self._members if m.instance.alive() and not m.retiring.is_set())

    def pids(self) -> list[int]:
        """PIDs of this pool's live processes (including ones draining)."""
        with self._lock:
            return [m.instance.pid for m in self._members if m.instance.proc.poll() is None]

    def _start(self, count: int) -> list[_Slot]:
        """Start ``count`` instances in parallel and wait for all to load (all or nothing)."""
        if count <= 0:
            return []
        try:
            image_profile(self.container.image)
        except ImageNotEmulated as exc:
            raise InstanceStartError(str(exc)) from None
        instances = [
            InstanceProcess(self.variant, self.container, self.aws_env) for _ in range(count)
        ]
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=count) as ex:
            for inst, fut in [(i, ex.submit(i.wait_ready, LOAD_TIMEOUT_S)) for i in instances]:
                try:
                    fut.result()
                except InstanceStartError as exc:
                    errors.append(str(exc))
                    inst.kill()
        if errors:
            for inst in instances:
                inst.kill()
            raise InstanceStartError(errors[0])
        members = [_Slot(inst) for inst in instances]
        with self._lock:
            if self.closed.is_set():
                for m in members:
                    m.instance.kill()
                return []
            self._members.extend(members)
        for member in members:
            for n in range(self.slots):
                thread = threading.Thread(
                    target=self._work,
                    args=(member,),
                    name=f"{member.instance.id}-slot{n}",
                    daemon=True,
                )
                member.threads.append(thread)
                thread.start()
        return members

    def _work(self, member: _Slot) -> None:
        """One slot: take a request, run it on this instance, repeat until retired or dead."""
        inst = member.instance
        while not self.closed.is_set() and not member.retiring.is_set() and inst.alive():
            if not self.active.is_set():
                self.active.wait(0.1)
                continue
            inv = self.queue.take(0.2, inst)
            if inv is None:
                continue
            if (
                self.closed.is_set()
                or member.retiring.is_set()
                or not self.active.is_set()
                or not inst.alive()
            ):
                self.queue.put_front(inv)
                break
            self.execute(inv, inst)
        if not inst.alive() and not member.retiring.is_set() and not self.closed.is_set():
            self._replace(member)

    def _replace(self, member: _Slot) -> None:
        """An instance died: drop it and start a replacement (as SageMaker does)."""
        with self._lock:
            if member not in self._members:
                return
            self._members.remove(member)
        member.retiring.set()
        member.instance.kill()
        if self.on_dead is not None:
            self.on_dead(member.instance.id)
        threading.Thread(target=self._top_up, name=f"{self.variant}-replace", daemon=True).start()

    def _top_up(self) -> None:
        """Start instances until the pool has ``desired`` of them (retrying failed starts)."""
        with self._top_up_lock:
            self._top_up_locked()

    def _top_up_locked(self) -> None:
        for attempt in range(5):
            with self._lock:
                missing = self.desired - len(self._members)
            if missing <= 0 or self.closed.is_set():
                return
            try:
                self._start(missing)
                return
            except InstanceStartError as exc:
                log.warning(
                    "localcloud: replacing an instance of %s failed (%s), retry %d",
                    self.variant,
                    exc,
                    attempt,
                )
                time.sleep(1.0)

    def scale_to(self, count: int) -> None:
        """Start or retire instances until ``count`` serve (blocks until loaded / drained)."""
        with self._top_up_lock:
            self.desired = count
            with self._lock:
                current = [m for m in self._members if not m.retiring.is_set()]
            if count > len(current):
                self._start(count - len(current))
            elif count < len(current):
                self._retire(current[count:], drain=True)

    def _retire(self, members: list[_Slot], drain: bool) -> None:
        """Stop members taking requests, let in-flight ones finish (if ``drain``), then kill them."""
        for m in members:
            m.retiring.set()
        if drain:
            for m in members:
                for t in m.threads:
                    t.join(timeout=LOAD_TIMEOUT_S)
        for m in members:
            m.instance.kill()
        with self._lock:
            self._members = [m for m in self._members if m not in members]

    def close(self, drain: bool) -> None:
        """Retire every instance; with ``drain`` in-flight requests finish first."""
        if not drain:
            self.closed.set()
        with self._lock:
            members = list(self._members)
        self._retire(members, drain=drain)
        self.closed.set()
