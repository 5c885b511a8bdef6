"""The ranks of one torchrun launch as one run: a shared key-value store, and a watch that stops every rank within
seconds when any of them fails, is interrupted or vanishes. `ursa batch` and `ursa generate --parallel` use it, on
one machine or several.

torchrun gives each rank RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/MASTER_PORT; the rendezvous store is served by
torchrun's agent (TORCHELASTIC_USE_AGENT_STORE=True) or, for ranks started another way, by rank 0. The session
connects to it through the public torch.distributed.TCPStore and builds the process group on that store, so no
private torch accessor is needed to share counters between ranks.

The watch is a daemon thread per rank with its own store connection. Every TICK seconds it beats (a counter per
rank), reads the abort record and looks at its peers: a peer on this host whose process is gone (pid/host, as the
output folder's lock), or one anywhere whose beat has not moved for SILENCE seconds, has vanished, and the watch
writes the abort record for it. The first rank to write that record (compare_set) is its one origin and message.
On an abort every rank's watch interrupts its main thread (KeyboardInterrupt, which unwinds the atomic writers)
and, if the process still runs GRACE seconds later (stuck in a collective with a dead peer), ends it hard.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from .processes import process_alive, this_host

TICK = 0.25         # seconds between beats
SILENCE = 10.0      # a peer whose beat has not moved this long has vanished (the only test across hosts)
GRACE = 5.0         # an aborted process still running this long is ended hard
STORE_MISSES = 3    # ticks without an answer from the store before its host (the launcher or rank 0) counts as gone
CONNECT = timedelta(minutes=30)   # torch's default rendezvous timeout: ranks of several machines start apart
EXIT_FAILED, EXIT_CANCELLED, EXIT_TERMINATED = 1, 130, 143


@dataclass(frozen=True)
class Abort:
    """Why the ranks stop: one origin (a rank, or -1 for a lost store), the rank that wrote it and its host,
    the exit code every rank uses and one line."""
    origin: int
    reporter: int
    host: str
    code: int
    message: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    @staticmethod
    def decode(data: bytes) -> "Abort":
        return Abort(**json.loads(data.decode("utf-8")))


class Terminated(KeyboardInterrupt):
    """SIGTERM (torchrun's agent ends the other ranks this way when one fails): unwound like Ctrl-C."""


def _connect(hosting: bool, timeout: timedelta) -> dist.TCPStore:
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=hosting,
                         timeout=timeout, wait_for_workers=False)


@dataclass
class _Peer:
    beat: int = -1
    moved: float = 0.0
    where: Optional[tuple[str, int]] = None
    done: bool = False

    def gone_from(self, host: str) -> bool:
        """A peer on `host` (this rank's) whose process has ended; a peer elsewhere is judged by its beats."""
        return self.where is not None and self.where[0] == host and not process_alive(self.where[1])


class RankSession:
    """This process's place in a torchrun launch: rank, world, the shared `store`, and the watch."""

    def __init__(self, rank: int, world: int, local_rank: int):
        self.rank, self.world, self.local_rank, self.host = rank, world, local_rank, this_host()
        prefix = f"ursa/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.hosting = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        self._server = _connect(self.hosting, CONNECT)     # rank 0 serves the store when no agent does
        self.store = dist.PrefixStore(prefix, self._server)
        self._watch_store = dist.PrefixStore(prefix, _connect(False, timedelta(seconds=60)))
        self.abort: Optional[Abort] = None       # set once this run stops (the origin's record)
        self.stopped_by_peer = False             # the watch interrupted this rank for another rank's abort
        self._handling = threading.Event()       # the main thread handles a failure or closes: no more interrupts
        self._stop = threading.Event()
        self._said = False                       # this rank has printed its line
        self._peers = {r: _Peer() for r in range(world) if r != rank}
        self.store.set(f"who/{rank}", f"{self.host} {os.getpid()}")
        self._wait_for("joined", world, CONNECT.total_seconds())   # every rank is in before any can fail
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        self._thread = threading.Thread(target=self._watch, name="ursa-rank-watch", daemon=True)
        self._thread.start()

    def _wait_for(self, counter: str, count: int, seconds: float) -> bool:
        """Count this rank into `counter` and wait until `count` ranks are (False when `seconds` pass first)."""
        deadline = time.monotonic() + seconds
        reached = self.store.add(counter, 1) >= count
        while not reached and time.monotonic() < deadline:
            time.sleep(0.02)
            reached = self.store.add(counter, 0) >= count
        return reached

    @staticmethod
    def from_env() -> "RankSession":
        return RankSession(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                           int(os.environ.get("LOCAL_RANK", "0")))

    def start_process_group(self, device: torch.device) -> None:
        """NCCL with cuda:LOCAL_RANK or gloo on the CPU, over the session's store."""
        store = dist.PrefixStore("pg", self.store)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", store=store, rank=self.rank, world_size=self.world, device_id=device)
        else:
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world)

    # --- failing ---------------------------------------------------------------------------------------------------
    def fail(self, code: int, message: str) -> Abort:
        """This rank failed (or was interrupted): write the abort record unless another rank did first, and end the
        process hard if it is still running GRACE seconds from now. Returns the record every rank acts on."""
        self._handling.set()
        if self.abort is None:
            self.abort = self._claim(Abort(self.rank, self.rank, self.host, code, message), self.store)
        if self.hosting:   # the store ends with this process: let the others read the record first
            self._linger()
        timer = threading.Timer(GRACE, self._exit_hard)
        timer.daemon = True   # a process that ends in time is not held back by it
        timer.start()
        return self.abort

    def settle(self, seconds: float = 4 * TICK) -> Optional[Abort]:
        """A collective failed in the main thread: give the watch a moment to say which rank vanished (a peer's
        death reaches gloo before its pid check). Returns the abort the watch found, if any."""
        self._handling.set()   # no interrupt while the main thread waits here
        deadline = time.monotonic() + seconds
        while self.abort is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.abort

    def say(self, line: str) -> None:
        """Print this rank's one line (stderr)."""
        self._said = True
        print(line, file=sys.stderr, flush=True)

    def _linger(self) -> None:
        """As the store's host, wait (SILENCE seconds at most) until every peer still running has read the abort."""
        deadline = time.monotonic() + SILENCE
        waiting = set(self._peers)
        try:
            while waiting and time.monotonic() < deadline:
                for rank in list(waiting):
                    if (self._peers[rank].gone_from(self.host) or self.store.check([f"abort_seen/{rank}"])
                            or self.store.check([f"done/{rank}"])):
                        waiting.discard(rank)
                time.sleep(0.02)
        except (RuntimeError, ValueError):
            pass

    def prints(self, abort: Abort) -> bool:
        """Whether this rank prints `abort`'s line: the rank that wrote it, and one rank on each other host."""
        return abort.reporter == self.rank or (abort.host != self.host and self.local_rank == 0)

    def line(self, abort: Abort) -> str:
        where = "" if abort.host == self.host or abort.origin < 0 else f"rank {abort.origin} on {abort.host}: "
        return f"{where}{abort.message}" if abort.code == EXIT_CANCELLED else f"error: {where}{abort.message}"

    def _claim(self, abort: Abort, store) -> Abort:
        try:
            return Abort.decode(store.compare_set("abort", "", abort.encode()))
        except (RuntimeError, ValueError):   # the store is gone: nobody else can be told
            return abort

    def _exit_hard(self) -> None:
        abort = self.abort
        if abort is not None and not self._said and self.stopped_by_peer and self.prints(abort):
            self.say(self.line(abort))
        sys.stdout.flush()
        os._exit(abort.code if abort is not None else EXIT_FAILED)

    # --- the watch -------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        peers = self._peers
        misses = 0
        try:
            for rank, peer in peers.items():   # every rank wrote it before the joined count was full
                host, pid = self._watch_store.get(f"who/{rank}").decode("utf-8").rsplit(" ", 1)
                peer.where = (host, int(pid))
        except (RuntimeError, ValueError):
            misses = STORE_MISSES
        while not self._stop.wait(TICK):
            found = self._gone_host(peers)   # before any store call: a dead store cannot answer
            if found is None:
                try:
                    found = self._look(peers)
                    misses = 0
                except (RuntimeError, ValueError):
                    misses += 1
                    found = None if misses < STORE_MISSES else Abort(
                        -1, self.rank, self.host, EXIT_FAILED,
                        "lost contact with the other ranks: their store (torchrun's agent, or rank 0) is gone")
            if found is not None and not self._stop.is_set():
                self._stop_main(found)
                return

    def _gone_host(self, peers: dict[int, _Peer]) -> Optional[Abort]:
        """Rank 0 ended on this host while it serves the store (ranks started without torchrun's agent)."""
        host_rank = peers.get(0)
        if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" or host_rank is None or host_rank.done
                or not host_rank.gone_from(self.host)):
            return None
        return Abort(0, self.rank, self.host, EXIT_FAILED,
                     f"rank 0 (pid {host_rank.where[1]}) ended without a word (killed?); every rank stops")

    def _look(self, peers: dict[int, _Peer]) -> Optional[Abort]:
        store, now = self._watch_store, time.monotonic()
        store.add(f"beat/{self.rank}", 1)
        if store.check(["abort"]):
            abort = Abort.decode(store.get("abort"))
            if abort.reporter != self.rank:
                store.set(f"abort_seen/{self.rank}", "1")   # the store's host may end once every rank has read it
            return abort
        for rank, peer in peers.items():
            if peer.done or store.check([f"done/{rank}"]):
                peer.done = True
                continue
            beat = store.add(f"beat/{rank}", 0)
            if beat != peer.beat:
                peer.beat, peer.moved = beat, now
            why = self._vanished(rank, peer, now)
            if why is not None:
                host = peer.where[0] if peer.where else "?"
                return self._claim(Abort(rank, self.rank, host, EXIT_FAILED, why), store)
        return None

    def _vanished(self, rank: int, peer: _Peer, now: float) -> Optional[str]:
        if peer.gone_from(self.host):
            return f"rank {rank} (pid {peer.where[1]}) ended without a word (killed?); every rank stops"
        if peer.beat > 0 and now - peer.moved > SILENCE:
            return f"rank {rank} has not answered for {SILENCE:.0f} s; every rank stops"
        return None

    def _stop_main(self, abort: Abort) -> None:
        self.abort = abort
        if abort.reporter == self.rank and abort.origin == self.rank:
            return   # our own failure: the main thread reported it and armed the hard exit
        if not self._handling.is_set():
            self.stopped_by_peer = True
            _interrupt_main()
        time.sleep(GRACE)
        self._exit_hard()

    # --- ending normally -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the launch: say so (a finished rank is not a vanished one), stop the watch, and as the store's
        host wait (a few seconds at most) until every rank has left, so none loses the store mid-call."""
        self._handling.set()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        if self.abort is not None:
            self._stop.set()
            return
        try:
            self.store.set(f"done/{self.rank}", "1")
            self._stop.set()
            self._thread.join()
            self.store.add("left", 1)
            deadline = time.monotonic() + GRACE
            while self.rank == 0 and self.store.add("left", 0) < self.world and time.monotonic() < deadline:
                time.sleep(0.05)
        except (RuntimeError, ValueError):
            pass   # the store's host already left: nothing is waiting on us


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _interrupt_main() -> None:
    """Raise KeyboardInterrupt in the main thread, waking it from a blocking system call where the OS allows."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:
        import _thread

        _thread.interrupt_main()
