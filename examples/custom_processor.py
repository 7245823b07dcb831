"""The smallest complete example of your own Processor, run in worker processes.

    python examples/custom_processor.py                      # local broker, 2 workers
    python examples/custom_processor.py --bootstrap memory://demo   # no Kafka at all

A Producer sends JPEG frames, a ParallelConsumer runs ``Brightness`` in two worker processes
and sends each result on as JSON, and a Consumer prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from contextlib import nullcontext

import cv2
import numpy as np

from fogverse import Consumer, ParallelConsumer, Processor, Producer, Record, run
from fogverse.broker import LocalKafka


class Brightness(Processor):
    """JPEG frame -> its mean brightness after contrast equalisation (CLAHE)."""

    def __init__(self, clip_limit: float = 2.0) -> None:
        # __init__ runs in the parent and is pickled to the workers: keep it to settings.
        self.clip_limit = clip_limit

    def setup(self) -> None:
        # Runs once in each worker before its first frame: load models and build objects
        # that cannot be pickled here (an OpenCV CLAHE object cannot).
        self.clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(8, 8))

    def process(self, data: bytes) -> dict:
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        equalised = self.clahe.apply(gray)
        return {"brightness": round(float(equalised.mean()), 2), "worker": os.getpid()}


def jpeg_frame(index: int) -> bytes:
    """A small synthetic frame: grey level and circle size change with ``index``."""
    frame = np.full((360, 640, 3), (index * 7) % 256, np.uint8)
    cv2.circle(frame, (320, 180), 40 + index % 100, (255, 255, 255), -1)
    return cv2.imencode(".jpg", frame)[1].tobytes()


class Frames(Producer):
    """Sends ``count`` JPEG frames keyed by their index, then ends the stream."""

    def __init__(self, count: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.count, self.sent = count, 0

    async def receive(self) -> Record:
        if self.sent == self.count:
            raise StopAsyncIteration
        self.sent += 1
        return Record(jpeg_frame(self.sent - 1), key=str(self.sent - 1).encode())


class Results(Consumer):
    """Prints each result; stops the whole pipeline after ``count`` results."""

    def __init__(self, count: int, stop_also: list, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.count, self.stop_also, self.seen = count, stop_also, set()

    def process(self, data: dict) -> None:
        self.seen.add(self.message.key)
        print(f"frame {self.message.key.decode():>3}: {json.dumps(data)}")
        if len(self.seen) == self.count:
            for node in (self, *self.stop_also):
                node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("FOGVERSE_BOOTSTRAP"))
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    with nullcontext() if args.bootstrap else LocalKafka() as kafka:
        servers = args.bootstrap or kafka.bootstrap
        run_id = uuid.uuid4().hex[:8]  # fresh topics and groups for every run
        frames, results = f"frames-{run_id}", f"brightness-{run_id}"
        # input_codec="bytes": the workers get the JPEG as it is and decode it themselves.
        stage = ParallelConsumer(
            frames, servers, f"stage-{run_id}", producer_topic=results, input_codec="bytes"
        )
        sink = Results(
            args.frames,
            [stage],
            consumer_topic=results,
            consumer_servers=servers,
            group_id=f"sink-{run_id}",
        )
        source = Frames(args.frames, producer_topic=frames, producer_servers=servers)
        run(source, stage.run(args.processes, 4, Brightness()), sink)
    print(
        f"{len(sink.seen)} of {args.frames} frames processed by {args.processes} worker processes"
    )


if __name__ == "__main__":
    main()
