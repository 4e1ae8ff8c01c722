"""bench/pipeline.py: the in-process floor that bench/latency.py measures against calls the
backend's own handlers with a context of its own, which must answer what they ask of it."""
from bench.datasets import b64
from bench.pipeline import Pipeline
from support import FACES, needs_shared

PAIR = [FACES / "facenet_sandberg" / f"Anthony_Hopkins_000{i}.jpg" for i in (1, 2)]


@needs_shared
def test_the_in_process_pipeline_verifies_embeds_and_analyzes():
    pipe = Pipeline(threads=1)
    try:
        one, two = (b64(p) for p in PAIR)
        assert pipe.verify(one, two).verified
        assert len(pipe.embed(one)) == 128
        assert len(pipe.analyze(one).faces) == 1
        pipe.register(one, "Anthony")
        assert pipe.identify(two, 1)[0][0] == "Anthony"
    finally:
        pipe.close()
