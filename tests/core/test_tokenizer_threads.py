"""Tokenising a long text leaves other Python threads running: the server tokenises prompts in
worker threads beside its event loop, which only helps if encode releases the GIL."""

from __future__ import annotations

import threading
import time

from fixtures_models import TinyModel
from ziggurat_core.engine.tokenizer import Tokenizer

# CPU time the worker must have spent inside encode when this thread looks: a measure of work
# done (a small part of encoding the text below), not of how fast the machine is.
WORK_SECONDS = 0.2


def test_encode_releases_the_gil(tiny_llama: TinyModel) -> None:
    tokenizer = Tokenizer.from_hf_dir(tiny_llama.hf_dir)
    text = "the quick brown fox jumps over the lazy dog " * 40_000
    entered = threading.Event()
    finished = threading.Event()
    result: list[list[int]] = []

    def encode() -> None:
        entered.set()
        result.append(tokenizer.encode(text))
        finished.set()

    worker = threading.Thread(target=encode)
    worker.start()
    assert entered.wait(60) and worker.ident is not None
    clock = time.pthread_getcpuclockid(worker.ident)
    start = time.clock_gettime(clock)
    # This thread runs Python between its short sleeps; with the GIL held by encode it could run
    # again only once the whole text was tokenised (and `finished` set).
    seen_mid_encode = False
    while not finished.is_set():
        if time.clock_gettime(clock) - start > WORK_SECONDS:
            seen_mid_encode = not finished.is_set()
            break
        time.sleep(0.001)
    worker.join()
    assert seen_mid_encode, "encode held the GIL until it finished"
    assert result[0] == tokenizer.encode(text)
